"""ILQL's Q and V heads on a causal LM, and the decoding they define, as modules.

    heads = ILQLHeads(hidden_size, vocab_size, width)    q: [..., H] -> [..., V], v: [..., H] -> [...]
    model.set_output_embeddings(ShiftedLMHead(model.get_output_embeddings(), heads, beta))

The heads read what the LM head reads (the last hidden state after the final norm), so a model
whose LM head is a ShiftedLMHead computes logits + beta * (Q - V) everywhere: `generate`, the
streaming decode loop and `score` of the HF engine all decode with ILQL without knowing it. An
exported ILQL model is the policy's HF directory plus `ilql_heads.safetensors` and `ilql.json`
(beta, shapes); `attach(model, dir)` (called by the HF engine on every model it loads) does the
wrapping when they are there.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from rl_service.algo.ilql import shifted_logits

HEADS_FILE = "ilql_heads.safetensors"
META_FILE = "ilql.json"


def _mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out))
    nn.init.zeros_(head[2].weight)  # Q = V = 0 at the start: the decoding begins as the behaviour policy
    nn.init.zeros_(head[2].bias)
    return head


class ILQLHeads(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, width: int):
        super().__init__()
        self.q = _mlp(hidden_size, width, vocab_size)
        self.v = _mlp(hidden_size, width, 1)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden [..., H] -> (Q [..., V], V [...])."""
        return self.q(hidden), self.v(hidden).squeeze(-1)


class ShiftedLMHead(nn.Module):
    """An LM head whose logits are ILQL's: lm_head(h) + beta * (Q(h) - V(h))."""

    def __init__(self, lm_head: nn.Module, heads: ILQLHeads, beta: float):
        super().__init__()
        self.lm_head, self.heads, self.beta = lm_head, heads, beta

    @property
    def weight(self) -> Tensor:  # code that reads the output embedding's weight sees the LM's
        return self.lm_head.weight

    def forward(self, hidden: Tensor) -> Tensor:
        q, v = self.heads(hidden)
        return shifted_logits(self.lm_head(hidden), q.to(hidden.dtype), v.to(hidden.dtype), self.beta)


def has_heads(model_dir: str | Path) -> bool:
    return (Path(model_dir) / HEADS_FILE).is_file()


def save_heads(model_dir: Path, heads: ILQLHeads, beta: float, width: int) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(model_dir / HEADS_FILE))
    q_out = heads.q[2]
    meta = {"beta": beta, "width": width, "hidden_size": heads.q[0].in_features, "vocab_size": q_out.out_features}
    (model_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def load_heads(model_dir: str | Path) -> tuple[ILQLHeads, float]:
    from safetensors.torch import load_file

    meta = json.loads((Path(model_dir) / META_FILE).read_text())
    heads = ILQLHeads(meta["hidden_size"], meta["vocab_size"], meta["width"])
    heads.load_state_dict(load_file(str(Path(model_dir) / HEADS_FILE)))
    return heads.eval(), float(meta["beta"])


def attach(model, model_dir: str | Path, beta: float | None = None) -> bool:
    """Wrap `model`'s LM head with the directory's ILQL heads (if it has them); True if it did.
    `beta` overrides the exported one."""
    if not has_heads(model_dir):
        return False
    heads, saved_beta = load_heads(model_dir)
    head = ShiftedLMHead(model.get_output_embeddings(), heads.to(model.device), saved_beta if beta is None else beta)
    model.set_output_embeddings(head)
    return True


def set_beta(model, beta: float) -> None:
    head = model.get_output_embeddings()
    if not isinstance(head, ShiftedLMHead):
        raise ValueError("this model has no ILQL heads attached")
    head.beta = beta
