"""Before the update: score the batch and compute its advantages, on the GLOBAL batch.

Each rank scores its share of the rows (old policy, reference, critic) with no grad; one
all-reduce gives every rank the full [N, T-1] tensors, so the KL, the rewards, the
advantages and any whitening are computed on the whole batch, identically everywhere.
The advantage estimator is the one registered under `cfg.advantage.type` (algo/estimators.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rl_service.algo.estimators import AdvantageInputs, get_advantage_estimator
from rl_service.algo.kl import kl_penalty
from rl_service.algo.masking import masked_mean, masked_sum
from rl_service.algo.segments import PromptGroups
from rl_service.config import LearnerConfig
from rl_service.learner.batching import group_runs, plan_micro_batches
from rl_service.learner.forward import Models, score_rows
from rl_service.learner.fsdp import all_reduce_sum


@dataclass
class RolloutTensors:
    """The whole batch, identical on every rank. Per-token tensors are [N, T-1]."""

    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    mask: Tensor  # [N, T-1] response tokens
    old_logprobs: Tensor  # [N, T-1] policy before this update
    ref_logprobs: Tensor | None  # [N, T-1] frozen reference (None when the KL is not measured)
    advantages: Tensor  # [N, T-1]
    old_values: Tensor | None  # [N, T-1] critic before this update (estimators with a critic only)
    returns: Tensor | None  # [N, T-1] critic targets (estimators with a critic only)
    groups: PromptGroups | None = None  # rows' prompt sharing (learner.share_prompt), else None


def _score_global_batch(
    models: Models,
    cfg: LearnerConfig,
    input_ids: Tensor,
    attention_mask: Tensor,
    with_policy: bool,
    with_reference: bool,
    groups: PromptGroups | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(old logprobs, reference logprobs, values), each [N, T-1] or None, on every rank."""
    N = input_ids.shape[0]
    lengths = attention_mask.sum(-1).tolist()
    share, prompt_lens = (None, None) if groups is None else (groups.group.tolist(), groups.prompt_len.tolist())
    micro = plan_micro_batches(
        range(N),
        models.rank,
        models.world_size,
        cfg.micro_batch_size,
        cfg.max_tokens_per_microbatch,
        lengths,
        share,
        prompt_lens,
    )
    parts = score_rows(
        models, micro, input_ids, attention_mask, with_policy=with_policy, with_reference=with_reference, groups=groups
    )
    # Rows are zero where another rank owns them, so a SUM assembles the full batch exactly.
    present = [t for t in parts if t is not None]
    summed = iter(all_reduce_sum(torch.stack(present)) if present else [])
    old_lp, ref_lp, values = (next(summed) if t is not None else None for t in parts)
    return old_lp, ref_lp, values


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
    groups: PromptGroups | None = None,
) -> tuple[RolloutTensors, dict[str, float]]:
    """Score the batch and compute advantages. batch: pad_samples output on the device; scores: [N];
    token_rewards: [N, T-1] aligned like response_mask (batch_token_rewards) or None;
    old_logprobs: [N, T-1] the sampling policy's (the engine's), or None to recompute them here;
    measure_kl: run the reference pass (must be True while the KL is penalised) and report kl/*;
    groups: the rows' prompt sharing (learner.share_prompt) or None.

    Metrics: kl/coef, kl/* (when measured), reward/token_* (with per-token rewards), and the
    estimator's own (reward/*, value/explained_var with a critic)."""
    input_ids, attention_mask, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    old_lp, ref_lp, values = _score_global_batch(
        models,
        cfg,
        input_ids,
        attention_mask,
        with_policy=old_logprobs is None,
        with_reference=measure_kl,
        groups=groups,
    )
    old_lp = old_lp if old_logprobs is None else old_logprobs
    if kl_coef > 0 and ref_lp is None:
        raise ValueError("the KL is penalised but no reference logprobs were computed")

    metrics = {"kl/coef": float(kl_coef)}
    kl_tok = None
    if ref_lp is not None:
        kl_tok = kl_penalty(old_lp, ref_lp, cfg.kl.estimator)  # [N, T-1]
        metrics["kl/mean"] = float(masked_mean(kl_tok, mask))
        metrics["kl/seq_mean"] = float(masked_sum(kl_tok, mask, dim=-1).mean())
    if token_rewards is not None:
        metrics["reward/token_mean"] = float(masked_mean(token_rewards, mask))
        metrics["reward/token_seq_mean"] = float(masked_sum(token_rewards, mask, dim=-1).mean())
    kl_in_reward = cfg.kl.placement == "reward" and kl_coef > 0
    inputs = AdvantageInputs(
        scores=scores,
        mask=mask,
        groups=group_runs(prompt_ids, group_size),
        values=values,
        reward_kl=kl_tok if kl_in_reward else None,
        kl_coef=kl_coef,
        token_rewards=token_rewards,
    )
    adv, returns, adv_metrics = get_advantage_estimator(cfg.advantage.type)(inputs, cfg.advantage)
    metrics.update(adv_metrics)
    data = RolloutTensors(input_ids, attention_mask, mask, old_lp, ref_lp, adv, values, returns, groups)
    return data, metrics
