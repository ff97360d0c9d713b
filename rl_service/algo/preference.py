"""Pairwise preference losses: Bradley–Terry (reward models) and DPO (policies).

Shapes: B = number of preference pairs, T = time. Every input holds one value per pair
(the chosen and the rejected completion of the same prompt). fp32 throughout. Each loss
returns `(scalar loss, metrics)` with python floats in the metrics.

Both losses share the same form on a per-pair logit z (how much more the model prefers
`chosen`):
    loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
`eps` = label smoothing: the label is taken to be wrong with probability eps (noisy
human labels); eps = 0 is the plain negative log-likelihood. `logsigmoid` keeps this
finite for any z (no log(0) when |z| is large).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rl_service.algo.masking import masked_sum


def smoothed_pair_nll(z: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
    """Per-pair NLL of "chosen beats rejected" with P = sigmoid(z). z: [B] -> [B].
    label_smoothing: one value, or one per pair [B] (a pair's own chance of a wrong label)."""
    eps = torch.as_tensor(label_smoothing, dtype=torch.float32, device=z.device)
    if not bool(((eps >= 0) & (eps < 0.5)).all()):
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    label_smoothing = eps
    z = z.float()
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | float = 0.0,
    label_smoothing: float | Tensor = 0.0,
    denom: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022): P(c > r) = sigmoid(r_c - r_r - m).

    chosen_rewards, rejected_rewards: [B] scalar rewards of each pair's two completions.
    margin: float or [B] (Llama-2 style): the chosen reward must beat the rejected one by at
        least this much before the loss stops pushing; 0 = plain Bradley–Terry.
    denom: divide the summed loss by this instead of B (a data-parallel trainer passes the
        GLOBAL pair count, so per-process losses add up to the single-process loss).
    Metrics: loss, accuracy (fraction with r_c > r_r, ties count 0), reward margin and
    the mean chosen / rejected rewards.
    """
    rc, rr = chosen_rewards.float(), rejected_rewards.float()
    diff = rc - rr  # [B]
    per_pair = smoothed_pair_nll(
        diff - torch.as_tensor(margin, dtype=torch.float32, device=diff.device), label_smoothing
    )
    loss = per_pair.sum() / (denom if denom is not None else max(diff.numel(), 1))
    per_pair, rc, rr, diff = per_pair.detach(), rc.detach(), rr.detach(), diff.detach()
    metrics = {
        "loss": float(per_pair.mean()) if per_pair.numel() else 0.0,
        "accuracy": float((diff > 0).float().mean()) if diff.numel() else 0.0,
        "reward/margin": float(diff.mean()) if diff.numel() else 0.0,
        "reward/chosen": float(rc.mean()) if rc.numel() else 0.0,
        "reward/rejected": float(rr.mean()) if rr.numel() else 0.0,
    }
    return loss, metrics


def sequence_logprobs(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Log-probability of each completion: sum of its masked token logprobs.

    token_logprobs, mask: [B, T] -> [B]. Padding (mask 0) contributes nothing, even if
    it holds NaN/inf.
    """
    return masked_sum(token_logprobs, mask, dim=-1)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
    denom: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Direct Preference Optimisation (Rafailov et al. 2023).

    All inputs: [B] sequence logprobs (`sequence_logprobs`) of each pair's completions
    under the trained policy and the frozen reference. The implicit reward of a
    completion y is beta * (log pi(y|x) - log ref(y|x)); DPO is the Bradley–Terry loss
    on the difference of the two implicit rewards:
        z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    label_smoothing > 0 is the conservative DPO of Mitchell (2023). `denom` as in
    `bradley_terry_loss`. Metrics: loss, accuracy (z > 0: the policy moved toward chosen
    relative to the reference), implicit rewards and margin.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_reward = beta * (policy_chosen.float() - ref_chosen.float())  # [B]
    rejected_reward = beta * (policy_rejected.float() - ref_rejected.float())  # [B]
    z = chosen_reward - rejected_reward
    per_pair = smoothed_pair_nll(z, label_smoothing)
    loss = per_pair.sum() / (denom if denom is not None else max(z.numel(), 1))
    per_pair, z, chosen_reward, rejected_reward = (t.detach() for t in (per_pair, z, chosen_reward, rejected_reward))
    policy_chosen, policy_rejected = policy_chosen.detach(), policy_rejected.detach()
    n = z.numel()
    metrics = {
        "loss": float(per_pair.mean()) if n else 0.0,
        "accuracy": float((z > 0).float().mean()) if n else 0.0,
        "reward/margin": float(z.mean()) if n else 0.0,
        "reward/chosen": float(chosen_reward.mean()) if n else 0.0,
        "reward/rejected": float(rejected_reward.mean()) if n else 0.0,
        "logp/chosen": float(policy_chosen.float().mean()) if n else 0.0,
        "logp/rejected": float(policy_rejected.float().mean()) if n else 0.0,
    }
    return loss, metrics
