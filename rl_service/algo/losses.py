"""PPO losses -> (loss, metrics). Shapes: B = batch, T = time; masks right-padded 0/1.

`agg` / `denom` go straight to `aggregate_loss`: with `denom` = the global token (or
sequence) count, each process's loss is its share of the global loss. The metric
"loss/*" reports that same returned value; the ratio metrics are local masked means.
Metric values are python floats (detached).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl_service.algo.masking import LossAgg, aggregate_loss, masked_mean, masked_var

# A log-ratio this large means a broken or very stale token; clamp before exp() so it
# cannot overflow to inf/NaN (its gradient is 0 beyond the clamp).
_MAX_LOG_RATIO = 20.0


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg: LossAgg = "token_mean",
    denom: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate (Schulman et al. 2017), as a loss to minimise.

    logprobs (current policy, with grad), old_logprobs (sampling policy), advantages, mask: [B, T].
        ratio = exp(logprobs - old_logprobs)
        loss_t = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    Metrics: policy/clipfrac = fraction of masked tokens where the clipped branch is the
    larger one (strictly, so it is the branch with zero gradient); policy/approx_kl =
    masked mean of the k3 estimator of KL(old || new) with samples from old:
    ratio - 1 - log ratio (>= 0, unbiased).
    """
    log_ratio = (logprobs.float() - old_logprobs.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss_tok = torch.maximum(unclipped, clipped)
    loss = aggregate_loss(loss_tok, mask, agg, denom)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    metrics = {
        "loss/policy": float(loss.detach()),
        "policy/clipfrac": float(clipfrac),
        "policy/approx_kl": float(approx_kl),
    }
    return loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg: LossAgg = "token_mean",
    denom: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2).

    values (with grad), old_values (at rollout time), returns, mask: [B, T].
    value/clipfrac = fraction of masked tokens where the clipped term is strictly larger.
    """
    v = values.float()
    old = old_values.float()
    ret = returns.float()
    v_clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    err = (v - ret).square()
    err_clipped = (v_clipped - ret).square()
    loss_tok = 0.5 * torch.maximum(err, err_clipped)
    loss = aggregate_loss(loss_tok, mask, agg, denom)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).float(), mask)
    return loss, {"loss/value": float(loss.detach()), "value/clipfrac": float(clipfrac)}


def entropy_bonus(
    entropy: Tensor, mask: Tensor, agg: LossAgg = "token_mean", denom: float | Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Aggregated entropy (the caller subtracts coef * value from its loss).

    entropy, mask: [B, T] -> (scalar with grad, {"entropy/mean": local masked token mean}).
    """
    value = aggregate_loss(entropy, mask, agg, denom)
    return value, {"entropy/mean": float(masked_mean(entropy.detach(), mask))}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect critic, <= 0 = useless.

    values, returns, mask: [B, T] -> float. Returns 0.0 when Var(R) is 0 (undefined;
    0 keeps metric logs free of NaN).
    """
    var_ret = masked_var(returns, mask)
    if float(var_ret) <= 0.0:
        return 0.0
    return float(1.0 - masked_var(returns.float() - values.float(), mask) / var_ret)
