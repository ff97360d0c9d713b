"""Micro-batch forwards of the policy and the critic, aligned with the learner's [B, T-1] grid.

Each forward trims the micro-batch to its own longest sequence (right padding is never
attended to, so dropping it changes nothing) and pads the outputs back to T-1 columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rl_service.algo.logprobs import entropy_from_logits, token_logprobs
from rl_service.learner.batching import content_length


@dataclass
class Models:
    """The sharded models of one learner process and where they live."""

    policy: nn.Module
    reference: nn.Module | None  # None when the KL is neither penalised nor measured
    critic: nn.Module | None
    device: torch.device
    rank: int
    world_size: int


def _trimmed(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, int]:
    L = content_length(attention_mask)
    return input_ids[:, :L], attention_mask[:, :L], L


def policy_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of token t+1 given tokens <= t (and the entropy of that prediction).

    input_ids, attention_mask: [b, T] -> (logprobs [b, T-1], entropy [b, T-1] or None), fp32.
    Columns past the micro-batch's longest sequence are 0. The entropy is detached unless
    `entropy_grad` (a metric-only entropy must not keep a second [b, T, V] graph alive).
    """
    T = input_ids.shape[1]
    ids, am, L = _trimmed(input_ids, attention_mask)
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits[:, :-1]  # [b, L-1, V]
    logprobs = F.pad(token_logprobs(logits, ids[:, 1:]), (0, T - L))
    entropy = None
    if with_entropy:
        entropy = F.pad(entropy_from_logits(logits if entropy_grad else logits.detach()), (0, T - L))
    return logprobs, entropy


def critic_values(critic: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """V(tokens <= t), the value of the state in which token t+1 is chosen.

    input_ids, attention_mask: [b, T] -> values [b, T-1] fp32.
    """
    T = input_ids.shape[1]
    ids, am, L = _trimmed(input_ids, attention_mask)
    values = critic(input_ids=ids, attention_mask=am)[:, :-1]  # ValueModel: [b, L] -> [b, L-1]
    return F.pad(values, (0, T - L))


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
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Old-policy logprobs, reference logprobs and values for this rank's micro-batches.

    micro: this rank's index lists (same count on every rank); input_ids, attention_mask: [N, T]
    -> ([N, T-1] x 3, zero on rows another rank owns). A pass that is switched off (with_policy,
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
        lp = policy_logprobs(models.policy, ids, am)[0] if old_lp is not None else None
        rlp = policy_logprobs(models.reference, ids, am)[0] if ref_lp is not None else None
        v = critic_values(models.critic, ids, am) if values is not None else None
        if active:
            for out, got in ((old_lp, lp), (ref_lp, rlp), (values, v)):
                if out is not None:
                    out[idx] = got
    return old_lp, ref_lp, values
