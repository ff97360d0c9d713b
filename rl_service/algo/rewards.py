"""Per-token rewards for token-level (GAE) advantages: KL shaping, per-token rewards + the sequence score."""

from __future__ import annotations

import torch
from torch import Tensor


def last_token_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the last masked token of each row, and whether the row has any.

    mask: [B, T] -> (index [B] long, has_token [B] bool). Rows without tokens get index 0.
    """
    m = mask.bool()
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    idx = torch.where(m, positions, torch.zeros_like(positions)).amax(dim=-1)
    return idx, m.any(dim=-1)


def token_level_rewards(
    scores: Tensor, mask: Tensor, kl: Tensor | None, kl_coef: float, token_rewards: Tensor | None = None
) -> Tensor:
    """-kl_coef * kl on every masked token, plus the score on the last masked token of each row,
    plus `token_rewards` (a per-token reward, e.g. on-policy distillation's teacher - student
    logprob) on every masked token.

    scores: [B], mask: [B, T], kl: [B, T] or None, token_rewards: [B, T] or None
    -> [B, T] fp32 (0 where mask is 0).
    """
    m = mask.bool()
    rewards = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    if kl is not None:
        rewards = torch.where(m, -float(kl_coef) * kl.float(), rewards)
    if token_rewards is not None:
        rewards = rewards + torch.where(m, token_rewards.float(), torch.zeros_like(rewards))
    idx, has_token = last_token_index(m)
    bonus = torch.where(has_token, scores.float(), torch.zeros_like(scores, dtype=torch.float32))
    return rewards.scatter_add(-1, idx.unsqueeze(-1), bonus.unsqueeze(-1))
