"""One PPO update over a batch, data-parallel over the FSDP ranks.

    1. prepare_rollout: each rank scores its share of the rows (old policy, reference,
       critic) with no grad; one all-reduce gives every rank the full [N, T-1] tensors,
       so rewards, advantages and whitening run on the GLOBAL batch identically everywhere.
    2. ppo_update: ppo_epochs x num_minibatches optimizer steps. A minibatch is the same
       set of rows whatever the world size; each rank takes a slice and divides its
       local loss sum by the minibatch's GLOBAL token (or sequence) count, times
       world_size because FSDP2 averages gradients over ranks. A 2-process step then
       equals a 1-process step up to float rounding.

Guards (every rank sees the same all-reduced sums and norms, so all decide alike):
    - a non-finite loss or gradient norm skips the optimizer step (counted; the learner
      tracks the streak and the controller halts after train.max_nan_steps in a row);
    - a minibatch whose approx KL to the old policy passes kl_stop_multiple * target_kl ends
      the update at once; target_kl alone ends it between epochs;
    - above kl_hard_limit the update ends and `policy/kl_hard_limit_hit` tells the controller
      to halt the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_service.algo.advantages import broadcast_to_tokens, gae, group_advantages
from rl_service.algo.kl import kl_penalty
from rl_service.algo.losses import entropy_bonus, explained_variance, ppo_policy_loss, value_loss
from rl_service.algo.masking import aggregate_loss, loss_denom, masked_mean, masked_sum, masked_whiten
from rl_service.algo.rewards import token_level_rewards
from rl_service.config import LearnerConfig
from rl_service.learner.batching import epoch_order, group_runs, minibatches, rank_micro_batches
from rl_service.learner.forward import Models, active_or_dummy, critic_values, policy_logprobs, score_rows
from rl_service.learner.fsdp import all_reduce_sum, clip_grad_norm


@dataclass
class RolloutTensors:
    """The whole batch, identical on every rank. Per-token tensors are [N, T-1]."""

    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    mask: Tensor  # [N, T-1] response tokens
    old_logprobs: Tensor  # [N, T-1] policy before this update
    ref_logprobs: Tensor | None  # [N, T-1] frozen reference (None when the KL is not measured)
    advantages: Tensor  # [N, T-1]
    old_values: Tensor | None  # [N, T-1] critic before this update (gae only)
    returns: Tensor | None  # [N, T-1] critic targets (gae only)


def grouped_advantages(scores: Tensor, prompt_ids: list[int], group_size: int, estimator: str) -> Tensor:
    """Group-baseline advantages for rows grouped by prompt. scores: [N] -> adv [N].

    Groups shortened by dropped samples are handled by calling the estimator once per
    group size (reinforce_pp then whitens within each size bucket).
    """
    adv = torch.zeros_like(scores, dtype=torch.float32)
    by_size: dict[int, list[int]] = {}
    for run in group_runs(prompt_ids, group_size):
        by_size.setdefault(len(run), []).extend(run)
    for n, rows in sorted(by_size.items()):
        adv[rows], _ = group_advantages(scores[rows], n, estimator)
    return adv


def frac_zero_std(scores: Tensor, prompt_ids: list[int], group_size: int) -> float:
    """Share of prompt groups whose rewards are all equal (no learning signal for group estimators)."""
    runs = group_runs(prompt_ids, group_size)
    return sum(float(scores[r].max() == scores[r].min()) for r in runs) / max(1, len(runs))


def prepare_rollout(
    models: Models,
    cfg: LearnerConfig,
    batch: dict[str, Tensor],
    scores: Tensor,
    prompt_ids: list[int],
    group_size: int,
    kl_coef: float,
    token_rewards: Tensor | None = None,
    old_logprobs: Tensor | None = None,
    measure_kl: bool = True,
) -> tuple[RolloutTensors, dict[str, float]]:
    """Score the batch and compute advantages. batch: pad_samples output on the device; scores: [N];
    token_rewards: [N, T-1] aligned like response_mask (batch_token_rewards) or None;
    old_logprobs: [N, T-1] the sampling policy's (the engine's), or None to recompute them here;
    measure_kl: run the reference pass (must be True while the KL is penalised) and report kl/*.

    Per-token rewards (on-policy distillation) enter GAE as rewards on their tokens; with a
    group estimator they are added to each token's advantage as they are (discount 0: a token
    is credited with its own reward only, as in on-policy distillation)."""
    input_ids, attention_mask, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    N = input_ids.shape[0]
    micro = rank_micro_batches(range(N), models.rank, models.world_size, cfg.micro_batch_size)
    parts = score_rows(
        models, micro, input_ids, attention_mask, with_policy=old_logprobs is None, with_reference=measure_kl
    )
    # Rows are zero where another rank owns them, so a SUM assembles the full batch exactly.
    present = [t for t in parts if t is not None]
    summed = iter(all_reduce_sum(torch.stack(present)) if present else [])
    old_lp, ref_lp, values = (next(summed) if t is not None else None for t in parts)
    old_lp = old_lp if old_logprobs is None else old_logprobs
    if kl_coef > 0 and ref_lp is None:
        raise ValueError("the KL is penalised but no reference logprobs were computed")

    in_reward = cfg.kl.placement == "reward"
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if N > 1 else 0.0,
        "kl/coef": float(kl_coef),
        "reward/frac_zero_std": frac_zero_std(scores, prompt_ids, group_size),
    }
    kl_tok = kl_seq = None
    if ref_lp is not None:
        kl_tok = kl_penalty(old_lp, ref_lp, cfg.kl.estimator)  # [N, T-1]
        kl_seq = masked_sum(kl_tok, mask, dim=-1)  # [N]
        metrics["kl/mean"] = float(masked_mean(kl_tok, mask))
        metrics["kl/seq_mean"] = float(kl_seq.mean())
    if token_rewards is not None:
        metrics["reward/token_mean"] = float(masked_mean(token_rewards, mask))
        metrics["reward/token_seq_mean"] = float(masked_sum(token_rewards, mask, dim=-1).mean())
    returns = None
    if cfg.advantage == "gae":
        assert values is not None, "gae needs the critic"
        rewards = token_level_rewards(
            scores, mask, kl_tok if in_reward and kl_coef > 0 else None, kl_coef, token_rewards
        )
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        metrics["value/explained_var"] = explained_variance(values, returns, mask)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
    else:
        # KL in the reward for a critic-free estimator: a sequence-level penalty on the score.
        shaped = scores - kl_coef * kl_seq if in_reward and kl_coef > 0 else scores
        adv_seq = grouped_advantages(shaped, prompt_ids, group_size, cfg.advantage)
        # No batch whitening here: the estimator sets the scale (dr_grpo deliberately
        # does not divide by a std; re-centring would move zero-signal groups off 0).
        adv = broadcast_to_tokens(adv_seq, mask)
        if token_rewards is not None:
            adv = adv + token_rewards * mask
    data = RolloutTensors(input_ids, attention_mask, mask, old_lp, ref_lp, adv, values, returns)
    return data, metrics


# Per-step sums all-reduced over ranks: the losses are each rank's share of the global
# loss (add up to it); the ratio metrics are token-weighted and divided by "tokens".
_SUMS = [
    "loss/policy",
    "loss/value",
    "loss/kl",
    "policy/clipfrac",
    "policy/approx_kl",
    "entropy/mean",
    "value/clipfrac",
    "tokens",
]
_TOKEN_WEIGHTED = slice(3, 7)


def ppo_update(
    models: Models,
    policy_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer | None,
    data: RolloutTensors,
    cfg: LearnerConfig,
    kl_coef: float,
    seed: int,
) -> dict[str, float]:
    """cfg.ppo_epochs x cfg.num_minibatches optimizer steps on `data` (every rank, in lockstep)."""
    N, W = data.mask.shape[0], models.world_size
    kl_in_loss = cfg.kl.placement == "loss" and kl_coef > 0
    step_sums = torch.zeros(len(_SUMS), dtype=torch.float64)
    grad_norms: list[float] = []
    steps = skipped = trailing = early_stop = hard_hit = 0
    kl_max = 0.0
    for epoch in range(cfg.ppo_epochs):
        epoch_kl, epoch_tokens = 0.0, 0.0
        for mb in minibatches(epoch_order(N, seed * 1_000_003 + epoch), cfg.num_minibatches):
            denom = loss_denom(data.mask[mb], cfg.loss_agg)  # GLOBAL count: every rank sees all rows
            local = torch.zeros(len(_SUMS), dtype=torch.float64)
            for raw in rank_micro_batches(mb, models.rank, W, cfg.micro_batch_size):
                idx, active = active_or_dummy(raw)
                local += _micro_step(models, data, cfg, idx, active, denom, kl_coef, kl_in_loss)
            sums = all_reduce_sum(local.to(models.device)).cpu()
            ntok = max(float(sums[-1]), 1.0)
            norm = clip_grad_norm(models.policy, cfg.max_grad_norm)
            critic_norm = clip_grad_norm(models.critic, cfg.max_grad_norm) if models.critic is not None else 0.0
            # clip_grad_norm_ returns a NaN norm unchanged and would let the step through.
            finite_loss = bool(torch.isfinite(sums[:3]).all())
            if finite_loss and math.isfinite(norm) and math.isfinite(critic_norm):
                policy_opt.step()
                if critic_opt is not None:
                    critic_opt.step()
                grad_norms.append(norm)
                trailing = 0
            else:
                skipped += 1  # all ranks see the same global sums and norm, so all skip together
                trailing += 1
            policy_opt.zero_grad(set_to_none=True)
            if critic_opt is not None:
                critic_opt.zero_grad(set_to_none=True)
            per_step = sums.clone()
            per_step[_TOKEN_WEIGHTED] /= ntok
            step_sums += per_step
            steps += 1
            mb_kl = float(sums[_SUMS.index("policy/approx_kl")]) / ntok
            epoch_kl += float(sums[_SUMS.index("policy/approx_kl")])
            epoch_tokens += float(sums[-1])
            if math.isfinite(mb_kl):
                kl_max = max(kl_max, mb_kl)
            if cfg.kl_hard_limit is not None and mb_kl > cfg.kl_hard_limit:
                hard_hit = early_stop = 1
                break
            if cfg.target_kl is not None and mb_kl > cfg.kl_stop_multiple * cfg.target_kl:
                early_stop = 1
                break
        if early_stop:
            break
        if (
            cfg.target_kl is not None
            and epoch + 1 < cfg.ppo_epochs
            and epoch_kl / max(epoch_tokens, 1.0) > cfg.target_kl
        ):
            early_stop = 1
            break
    means = {k: float(v) / max(steps, 1) for k, v in zip(_SUMS, step_sums) if k != "tokens"}
    dropped = (["loss/value", "value/clipfrac"] if models.critic is None else []) + ([] if kl_in_loss else ["loss/kl"])
    for k in dropped:
        del means[k]
    means.update(
        {
            "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            "train/skipped_steps": float(skipped),
            "train/optimizer_steps": float(steps - skipped),
            "train/trailing_skipped": float(trailing),
            "policy/early_stop": float(early_stop),
            "policy/approx_kl_max": kl_max,
            "policy/kl_hard_limit_hit": float(hard_hit),
        }
    )
    return means


def _micro_step(
    models: Models,
    data: RolloutTensors,
    cfg: LearnerConfig,
    idx: list[int],
    active: bool,
    denom: float,
    kl_coef: float,
    kl_in_loss: bool,
) -> Tensor:
    """Forward + backward of one micro-batch; returns its local metric sums (order of _SUMS)."""
    mask = data.mask[idx] * float(active)  # a dummy micro-batch weighs 0 but still runs
    ids, am = data.input_ids[idx], data.attention_mask[idx]
    want_entropy_grad = cfg.entropy_coef > 0
    logprobs, entropy = policy_logprobs(models.policy, ids, am, with_entropy=True, entropy_grad=want_entropy_grad)
    loss, pm = ppo_policy_loss(
        logprobs, data.old_logprobs[idx], data.advantages[idx], mask, cfg.clip_eps, cfg.loss_agg, denom
    )
    if want_entropy_grad:
        bonus, _ = entropy_bonus(entropy, mask, cfg.loss_agg, denom)
        loss = loss - cfg.entropy_coef * bonus
    kl_loss = torch.zeros(())
    if kl_in_loss:
        kl_loss = aggregate_loss(
            kl_penalty(logprobs, data.ref_logprobs[idx], cfg.kl.estimator), mask, cfg.loss_agg, denom
        )
        loss = loss + kl_coef * kl_loss
    vl, vm = torch.zeros(()), {"value/clipfrac": 0.0}
    if models.critic is not None:
        values = critic_values(models.critic, ids, am)
        vl, vm = value_loss(
            values, data.old_values[idx], data.returns[idx], mask, cfg.value_clip_eps, cfg.loss_agg, denom
        )
        loss = loss + cfg.vf_coef * vl
    # FSDP2 averages gradients over ranks; the loss is this rank's share of the global
    # loss, so scale by world_size to turn that average back into the sum.
    (loss * models.world_size).backward()
    ntok = float(mask.sum())
    return torch.tensor(
        [
            float(pm["loss/policy"]),
            float(vl.detach()),
            float(kl_loss.detach()),
            pm["policy/clipfrac"] * ntok,
            pm["policy/approx_kl"] * ntok,
            float(masked_sum(entropy.detach(), mask)),
            vm["value/clipfrac"] * ntok,
            ntok,
        ],
        dtype=torch.float64,
    )
