"""The critic: the policy's backbone with a 1-output value head, for any HF causal LM.

Composed rather than taken from AutoModelForTokenClassification: not every architecture has
a token-classification class, and those that do differ (GPT-2's has no `score`). The
attribute names keep the state-dict keys of LlamaForTokenClassification (`model.*` + `score.*`,
generally `<base_model_prefix>.*` + `score.*`), so critic checkpoints written with that class
still load.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ValueModel(nn.Module):
    """V(tokens <= t) for every position: backbone hidden states -> Linear(hidden, 1)."""

    def __init__(self, backbone: nn.Module, prefix: str):
        """`backbone`: an HF base model (AutoModel); `prefix`: the attribute it is stored under
        (the causal LM class's `base_model_prefix`: `model` for Llama, `transformer` for GPT-2)."""
        super().__init__()
        self.prefix = prefix
        self.add_module(prefix, backbone)
        width = _output_width(backbone)
        self.score = nn.Linear(width, 1, dtype=next(backbone.parameters()).dtype)
        with torch.no_grad():  # V = 0 at the start: no bias toward any return scale
            self.score.weight.zero_()
            self.score.bias.zero_()

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.prefix)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        **attention_kwargs,
    ) -> Tensor:
        """input_ids, attention_mask, position_ids: [b, L] -> values [b, L] (fp32). A packed row
        passes position_ids (restarting at each sample), no attention_mask, and its
        `segment_layout` (learner/attention.py) among `attention_kwargs`, which reach every
        attention layer."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **attention_kwargs,
        ).last_hidden_state
        return self.score(hidden)[..., 0].float()


def _output_width(backbone: nn.Module) -> int:
    """Width of the backbone's last hidden state, measured on one token (config attribute
    names vary: hidden_size, n_embd, d_model; some models project the output)."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    with torch.no_grad():
        out = backbone(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    backbone.train(was_training)
    return int(out.last_hidden_state.shape[-1])


def load_value_model(model_path: str, dtype: torch.dtype = torch.float32) -> ValueModel:
    """The critic for the causal LM in `model_path`: its backbone weights, a zero value head."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(model_path, dtype=dtype)
    # The base model class carries the prefix its causal LM stores it under.
    return ValueModel(backbone, backbone.base_model_prefix)
