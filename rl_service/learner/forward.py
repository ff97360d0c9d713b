"""Micro-batch forwards of the policy and the critic, aligned with the learner's [B, T-1] grid.

Padded (the default): each forward trims the micro-batch to its own longest sequence (right
padding is never attended to, so dropping it changes nothing) and pads the outputs back to
T-1 columns. Packed (`Models.packed`, learner.max_tokens_per_microbatch): the micro-batch's
samples run as one row with per-sample position ids and no padding (algo/packing.py), and the
outputs are unpacked onto the same grid.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rl_service.algo.logprobs import entropy_from_logits, token_logprobs
from rl_service.algo.segments import PromptGroups, RowLayout, row_layout
from rl_service.learner.batching import content_length


@dataclass
class Models:
    """The sharded models of one learner process and where they live."""

    policy: nn.Module
    reference: nn.Module | None  # None when the KL is neither penalised nor measured; LoRA: AdaptersOff(policy)
    critic: nn.Module | None
    device: torch.device
    rank: int
    world_size: int
    packed: bool = False
    """Forwards run each micro-batch as one packed row (sequence packing) instead of padded rows."""
    adapter_dropout: bool = False
    """LoRA with dropout > 0: the gradient passes drop on the adapters' inputs (learner/lora.py)."""

    def dropout_in_grad_pass(self, model: nn.Module):
        """Context of a gradient forward of `model`: its LoRA dropout on, if any; else nothing."""
        if not self.adapter_dropout or model is None:
            return nullcontext()
        from rl_service.learner.lora import adapter_dropout

        return adapter_dropout(model)


def _trimmed(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, int]:
    L = content_length(attention_mask)
    return input_ids[:, :L], attention_mask[:, :L], L


def policy_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    packed: bool = False,
    groups: PromptGroups | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of token t+1 given tokens <= t (and the entropy of that prediction).

    input_ids, attention_mask: [b, T] (right-padded) -> (logprobs [b, T-1], entropy [b, T-1] or
    None), fp32. Columns past each sample (padded: past the micro-batch's longest) are 0. The
    entropy is detached unless `entropy_grad` (a metric-only entropy must not keep a second
    [b, T, V] graph alive). `packed`: one row of the samples back to back (no padding computed);
    `groups` (packed only, PromptGroups of these rows): a group's prompt is computed once.
    """
    T = input_ids.shape[1]
    if packed:
        layout, ids, pos = _packed_row(input_ids, attention_mask, groups)
        logits = model(input_ids=ids, position_ids=pos, use_cache=False, segment_layout=layout).logits[0]  # [L, V]
        logits = logits.float()
        # token_logprobs' logit[target] - logsumexp, read at each grid entry's predicting position
        picked = logits[layout.src, input_ids[:, 1:]] - torch.logsumexp(logits, -1)[layout.src]  # [b, T-1]
        logprobs = torch.where(layout.valid, picked, 0.0)
        entropy = None
        if with_entropy:
            entropy = layout.gather(entropy_from_logits(logits if entropy_grad else logits.detach()))
        return logprobs, entropy
    ids, am, L = _trimmed(input_ids, attention_mask)
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits[:, :-1]  # [b, L-1, V]
    logprobs = F.pad(token_logprobs(logits, ids[:, 1:]), (0, T - L))
    entropy = None
    if with_entropy:
        entropy = F.pad(entropy_from_logits(logits if entropy_grad else logits.detach()), (0, T - L))
    return logprobs, entropy


def _packed_row(
    input_ids: Tensor, attention_mask: Tensor, groups: PromptGroups | None
) -> tuple[RowLayout, Tensor, Tensor]:
    """The micro-batch as one packed row: (layout, ids [1, L], position_ids [1, L])."""
    layout = row_layout(attention_mask.sum(-1).tolist(), input_ids.shape[1], groups, input_ids.device)
    return layout, input_ids.reshape(-1)[layout.token_index][None], layout.position_ids[None]


def critic_values(
    critic: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    packed: bool = False,
    groups: PromptGroups | None = None,
) -> Tensor:
    """V(tokens <= t), the value of the state in which token t+1 is chosen.

    input_ids, attention_mask: [b, T] -> values [b, T-1] fp32 (`packed`, `groups` as in policy_logprobs).
    """
    T = input_ids.shape[1]
    if packed:
        layout, ids, pos = _packed_row(input_ids, attention_mask, groups)
        return layout.gather(critic(input_ids=ids, position_ids=pos, segment_layout=layout)[0])  # [1, L] -> [b, T-1]
    ids, am, L = _trimmed(input_ids, attention_mask)
    values = critic(input_ids=ids, attention_mask=am)[:, :-1]  # ValueModel: [b, L] -> [b, L-1]
    return F.pad(values, (0, T - L))


@torch.no_grad()
def check_packed_attention(model: nn.Module, device: torch.device, shared: bool = False) -> None:
    """Refuse a model whose attention crosses sample boundaries in a packed row (one that ignores
    position-id resets or the segment layout): samples packed must score as each does alone, and
    with `shared`, two completions sharing their prompt too. Collective under FSDP (forwards):
    every rank calls it."""
    vocab = int(model.config.vocab_size)
    # [3, 5]: lengths 5, 3, 5, 4; rows 2 and 3 have the same 2-token prompt
    rows = torch.tensor([[3, 5, 7, 9, 11], [4, 6, 8, 0, 0], [5, 7, 9, 4, 6], [5, 7, 3, 8, 0]], device=device) % vocab
    am = (torch.arange(5, device=device)[None] < torch.tensor([[5], [3], [5], [4]], device=device)).long()
    groups = PromptGroups(torch.tensor([2, 2, 2, 2]), torch.tensor([-1, -1, 0, 0])) if shared else None
    packed = policy_logprobs(model, rows, am, packed=True, groups=groups)[0]
    alone = torch.cat([policy_logprobs(model, rows[i : i + 1], am[i : i + 1])[0] for i in range(4)])
    diff = float(((packed - alone) * am[:, 1:]).abs().max())
    if not diff < 1e-4:
        name = type(model).__name__
        impl = getattr(model.config, "_attn_implementation", "?")
        what = "learner.share_prompt" if shared else "learner.max_tokens_per_microbatch"
        fix = "learner.share_prompt: false" if shared else "learner.max_tokens_per_microbatch: null"
        raise ValueError(
            f"{what}: {name} (attention {impl!r}) does not keep packed samples apart "
            f"(logprobs differ by {diff:.3g} from unpacked); set {fix}"
        )


def active_or_dummy(idx: list[int]) -> tuple[list[int], bool]:
    """An empty micro-batch still runs (on sample 0, weight 0): FSDP's per-layer all-gathers
    and gradient reduce-scatters are collectives that every rank must join."""
    return (idx, True) if idx else ([0], False)


@torch.no_grad()
def score_rows(
    models: Models,
    micro: list[list[int]],
    input_ids: Tensor,
    attention_mask: Tensor,
    with_policy: bool = True,
    with_reference: bool = True,
    groups: PromptGroups | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Old-policy logprobs, reference logprobs and values for this rank's micro-batches.

    micro: this rank's index lists (same count on every rank); input_ids, attention_mask: [N, T]
    -> ([N, T-1] x 3, zero on rows another rank owns); groups: [N] rows' prompt sharing (packed
    only; None = none). A pass that is switched off (with_policy,
    with_reference False) or has no model (no critic) is skipped and returns None.
    """
    N, T = input_ids.shape
    with_reference = with_reference and models.reference is not None

    def grid(on: bool) -> Tensor | None:
        return torch.zeros(N, T - 1, dtype=torch.float32, device=input_ids.device) if on else None

    old_lp, ref_lp, values = grid(with_policy), grid(with_reference), grid(models.critic is not None)
    if old_lp is None and ref_lp is None and values is None:
        return None, None, None
    for raw in micro:
        idx, active = active_or_dummy(raw)
        ids, am = input_ids[idx], attention_mask[idx]
        packed, g = models.packed, groups.select(idx) if groups is not None else None
        lp = policy_logprobs(models.policy, ids, am, packed=packed, groups=g)[0] if old_lp is not None else None
        rlp = policy_logprobs(models.reference, ids, am, packed=packed, groups=g)[0] if ref_lp is not None else None
        v = critic_values(models.critic, ids, am, packed=packed, groups=g) if values is not None else None
        if active:
            for out, got in ((old_lp, lp), (ref_lp, rlp), (values, v)):
                if out is not None:
                    out[idx] = got
    return old_lp, ref_lp, values
