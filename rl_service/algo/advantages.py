"""Advantage estimators: GAE over tokens (with a critic) and group baselines (critic-free).

Shapes: B = batch, T = time; masks are 0/1 float or bool, right-padded. fp32 throughout.
Group estimators take one scalar score per sample and the rows of each prompt's group.
This module is the math; rl_service/algo/estimators.py registers every estimator (GAE and
each of GROUP_BASELINES) by name behind one call signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), one backwards scan over T.

    token_rewards, values, mask: [B, T] -> (advantages [B, T], returns [B, T]).
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    The value after the last masked token is 0 (the response ended: terminal). Masked-out
    positions neither produce outputs (0) nor break the recursion: the carry passes
    through them, so with right padding the scan starts from (V=0, A=0) at each row's end.
    returns = advantages + values on masked tokens (the critic's regression target).
    """
    m = mask.bool()
    r = token_rewards.float()
    v = torch.where(m, values.float(), torch.zeros((), dtype=torch.float32))
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float32, device=r.device)
    next_value = torch.zeros(B, dtype=torch.float32, device=r.device)
    next_adv = torch.zeros(B, dtype=torch.float32, device=r.device)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        mt = m[:, t]
        adv[:, t] = torch.where(mt, a_t, torch.zeros_like(a_t))
        next_value = torch.where(mt, v[:, t], next_value)
        next_adv = torch.where(mt, a_t, next_adv)
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


# ---------------------------------------------------------------- group estimators
# Each takes grouped scores [G, n] (G prompts, n samples each) and returns [G, n].


def _group_std(x: Tensor) -> Tensor:
    """Unbiased std per row of [G, n] -> [G, 1]; 0 (not NaN) when n < 2."""
    n = x.shape[-1]
    if n < 2:
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    return x.std(dim=-1, keepdim=True)


def _grpo(x: Tensor, eps: float) -> Tensor:
    # GRPO (Shao et al. 2024): z-score within the group.
    return (x - x.mean(-1, keepdim=True)) / (_group_std(x) + eps)


def _dr_grpo(x: Tensor, eps: float) -> Tensor:
    # Dr. GRPO (Liu et al. 2025): dividing by the group std biases toward easy/hard
    # prompts, so only the mean baseline is removed.
    return x - x.mean(-1, keepdim=True)


def _rloo(x: Tensor, eps: float) -> Tensor:
    # RLOO (Ahmadian et al. 2024): baseline = mean of the n-1 OTHER samples, so a
    # sample's own reward does not bias its baseline.
    n = x.shape[-1]
    others_mean = (x.sum(-1, keepdim=True) - x) / max(n - 1, 1)
    return x - others_mean


def _reinforce_pp(x: Tensor, eps: float) -> Tensor:
    # REINFORCE++ with a group baseline (Hu 2025): subtract the group mean, then whiten
    # over the whole batch. The centred values already have batch mean 0, so whitening
    # reduces to dividing by their batch std (no re-centring, which would only add
    # rounding noise and move zero-variance groups away from exactly 0).
    centred = (x - x.mean(-1, keepdim=True)).flatten()
    std = centred.std() if centred.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    return (centred / (std + eps)).view_as(x)


# The group baselines by name: (scores [G, n], eps) -> advantages [G, n]. algo/estimators.py
# registers each one as an advantage estimator under the same name.
GROUP_BASELINES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,
}


def _baseline(x: Tensor, estimator: str, eps: float) -> Tensor:
    """Grouped scores [G, n] -> advantages [G, n]. Groups whose rewards are all equal carry no
    learning signal: their advantage is exactly 0 for every estimator (forced, so rounding in
    the mean cannot leave tiny values that the std division would blow up)."""
    if estimator not in GROUP_BASELINES:
        raise ValueError(f"unknown advantage estimator {estimator!r} (known: {', '.join(GROUP_BASELINES)})")
    zero_std = x.amax(-1) == x.amin(-1)  # [G]
    adv = GROUP_BASELINES[estimator](x, eps)
    return torch.where(zero_std.unsqueeze(-1), torch.zeros_like(adv), adv)


def zero_std_groups(scores: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """Which groups carry no signal for a group baseline. scores: [B] -> [G] bool, True where
    every reward of the group is equal (a group of one included; NaN rewards count as unequal)."""
    s = scores.detach().float().cpu()
    return torch.tensor([bool(s[list(g)].max() == s[list(g)].min()) for g in groups], dtype=torch.bool)


def reward_metrics(scores: Tensor, groups: Sequence[Sequence[int]]) -> dict[str, float]:
    """The batch's reward statistics every estimator reports. scores: [B]; groups: row indices
    of each prompt's samples. reward/frac_zero_std = share of groups with all-equal rewards."""
    B = scores.shape[0]
    return {
        "reward/mean": float(scores.mean()) if B else 0.0,
        "reward/std": float(scores.std()) if B > 1 else 0.0,
        "reward/frac_zero_std": float(zero_std_groups(scores, groups).sum()) / max(1, len(groups)),
    }


def group_advantages(
    scores: Tensor, group_size: int, estimator: str, eps: float = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    """Per-sample advantages from a group baseline, for whole groups.

    scores: [B] (rows b*n .. b*n+n-1 are one prompt's n = group_size samples) -> (adv [B], metrics).
    Groups whose rewards are all equal get advantage exactly 0; their share is
    metrics["reward/frac_zero_std"].
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1 (got {group_size})")
    B = scores.shape[0]
    if B % group_size != 0:
        raise ValueError(
            f"batch of {B} scores is not a whole number of groups of size {group_size}: "
            "every prompt needs all of its samples in the same batch"
        )
    adv = _baseline(scores.float().view(B // group_size, group_size), estimator, eps).flatten()
    blocks = [range(g, g + group_size) for g in range(0, B, group_size)]
    metrics = {
        **reward_metrics(scores.float(), blocks),
        "advantage/mean": float(adv.mean()) if B else 0.0,
        "advantage/abs_mean": float(adv.abs().mean()) if B else 0.0,
    }
    return adv, metrics


def grouped_advantages(scores: Tensor, groups: Sequence[Sequence[int]], estimator: str, eps: float = 1e-6) -> Tensor:
    """Group-baseline advantages for groups of any sizes. scores: [B]; groups: row indices of
    each prompt's samples (a group is short when the scorer dropped samples) -> adv [B].

    The baseline runs once per group size on that size's groups (reinforce_pp then whitens
    within each size bucket). Rows in no group get 0.
    """
    adv = torch.zeros_like(scores, dtype=torch.float32)
    by_size: dict[int, list[int]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).extend(g)
    for n, rows in sorted(by_size.items()):
        adv[rows] = _baseline(scores[rows].float().view(len(rows) // n, n), estimator, eps).flatten()
    return adv


def broadcast_to_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    """Give every masked token its sequence's advantage. adv: [B], mask: [B, T] -> [B, T] (0 off-mask)."""
    m = mask.bool()
    return torch.where(m, adv.float().unsqueeze(-1).expand(m.shape), torch.zeros((), dtype=torch.float32))
