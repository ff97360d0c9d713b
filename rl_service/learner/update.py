"""The PPO update: ppo_epochs x num_minibatches optimizer steps, data-parallel over the FSDP ranks.

A minibatch is the same set of rows whatever the world size; each rank takes a slice and
divides its local loss sum by the minibatch's GLOBAL token (or sequence) count, times
world_size because FSDP2 averages gradients over ranks. A 2-process step then equals a
1-process step up to float rounding.

Guards (every rank sees the same all-reduced sums and norms, so all decide alike):
    - a non-finite loss or gradient norm skips the optimizer step (counted; the learner
      tracks the streak and the controller halts after train.max_nan_steps in a row);
    - a minibatch whose approx KL to the old policy passes kl_stop_multiple * target_kl ends
      the update at once; target_kl alone ends it between epochs;
    - above kl_hard_limit the update ends, its steps are undone (weights and optimizer
      states back to what they were before the update: the policy that generated the data,
      the last one known healthy) and `policy/kl_hard_limit_hit` tells the controller to halt
      the run, so the halt checkpoint never holds the policy that blew up.

Zero-advantage samples (cfg.skip_zero_advantage, where `zero_advantage_skip` says it is exact)
are left out of the micro-batches but not out of `denom`: their loss and gradient are exactly 0,
so only the normaliser needs them. The skip list is a function of the batch (identical on
every rank), so every rank still runs the same number of forward/backward calls.

Metrics travel by name: each micro-batch returns a dict of local sums, fsdp.all_reduce_metrics
sums them over ranks name by name.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from rl_service.algo.kl import kl_penalty
from rl_service.algo.losses import entropy_bonus, ppo_policy_loss, value_loss
from rl_service.algo.masking import (
    aggregate_loss,
    loss_denom,
    masked_count,
    masked_sum,
    work_token_counts,
    zero_signal_rows,
)
from rl_service.algo.packing import token_slots
from rl_service.algo.segments import PromptGroups
from rl_service.config import LearnerConfig
from rl_service.learner.batching import (
    epoch_order,
    minibatches,
    plan_micro_batches,
    rank_micro_batches,
    share_units,
    shared_length,
)
from rl_service.learner.forward import Models, active_or_dummy, critic_values, policy_logprobs
from rl_service.learner.fsdp import all_reduce_metrics, clip_grad_norm
from rl_service.learner.prepare import RolloutTensors

# What each micro-batch sums (then all-reduced over ranks). The losses are each rank's share
# of the global loss (they add up to it); the token-weighted ones are sum(metric * tokens)
# and are divided by the minibatch's "tokens" to give its token mean.
_LOSSES = ("loss/policy", "loss/value", "loss/kl")
_TOKEN_WEIGHTED = ("policy/clipfrac", "policy/approx_kl", "entropy/mean", "value/clipfrac")
_STEP_SUMS = (*_LOSSES, *_TOKEN_WEIGHTED, "tokens")


@dataclass
class _UpdateLog:
    """Per-step sums and the guards' counters of one update, reported by `metrics()`."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STEP_SUMS, 0.0))
    grad_norms: list[float] = field(default_factory=list)
    steps: int = 0
    skipped: int = 0
    trailing: int = 0  # skipped steps since the last applied one
    early_stop: bool = False
    hard_hit: bool = False
    kl_max: float = 0.0

    def record(self, sums: dict[str, float], grad_norm: float | None) -> float:
        """Add one optimizer step's global sums (grad_norm None = skipped); returns its approx KL."""
        ntok = max(sums["tokens"], 1.0)
        for k, v in sums.items():
            self.sums[k] += v / ntok if k in _TOKEN_WEIGHTED else v
        self.steps += 1
        if grad_norm is None:
            self.skipped += 1
            self.trailing += 1
        else:
            self.grad_norms.append(grad_norm)
            self.trailing = 0
        mb_kl = sums["policy/approx_kl"] / ntok
        if math.isfinite(mb_kl):
            self.kl_max = max(self.kl_max, mb_kl)
        return mb_kl

    def metrics(self, has_critic: bool, kl_in_loss: bool) -> dict[str, float]:
        dropped = {"tokens"} | ({"loss/value", "value/clipfrac"} if not has_critic else set())
        dropped |= set() if kl_in_loss else {"loss/kl"}
        means = {k: v / max(self.steps, 1) for k, v in self.sums.items() if k not in dropped}
        return {
            **means,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else float("nan"),
            "train/skipped_steps": float(self.skipped),
            "train/optimizer_steps": float(self.steps - self.skipped),
            "train/trailing_skipped": float(self.trailing),
            "policy/early_stop": float(self.early_stop),
            "policy/approx_kl_max": self.kl_max,
            "policy/kl_hard_limit_hit": float(self.hard_hit),
        }


@dataclass
class _WorkPlan:
    """Every rank's micro-batches (padded rows, or packed by a token budget) and the token slots
    their forwards compute, summed over all ranks: every rank knows every rank's plan."""

    cfg: LearnerConfig
    lengths: list[int]  # sequence length of each row of the batch
    world_size: int
    groups: PromptGroups | None = None  # prompt sharing of the rows (learner.share_prompt)
    real: int = 0  # sample tokens
    slots: int = 0  # tokens the forwards compute, padding included (prompt sharing not counted)
    padded_slots: int = 0  # what padded micro-batches of micro_batch_size rows would compute
    shared: int = 0  # prompt tokens not computed because a group shared its prompt

    def micro_batches(self, work: list[int], rank: int) -> list[list[int]]:
        """`rank`'s micro-batches of the minibatch rows `work` (the same count on every rank)."""
        cfg, W, packed = self.cfg, self.world_size, self.cfg.max_tokens_per_microbatch is not None
        g = self.groups
        share, plens = (None, None) if g is None else (g.group.tolist(), g.prompt_len.tolist())
        plans = [
            plan_micro_batches(
                work, r, W, cfg.micro_batch_size, cfg.max_tokens_per_microbatch, self.lengths, share, plens
            )
            for r in range(W)
        ]
        for r, plan in enumerate(plans):
            padded = rank_micro_batches(work, r, W, cfg.micro_batch_size) if packed else plan
            real, slots = token_slots(plan, self.lengths, packed)
            self.real, self.slots = self.real + real, self.slots + slots
            self.padded_slots += token_slots(padded, self.lengths, packed=False)[1]
            for mb in plan if share is not None else ():
                self.shared += sum(self.lengths[i] for i in mb) - sum(
                    shared_length(u, self.lengths, share, plens) for u in share_units(mb, share)
                )
        return plans[rank]

    def metrics(self) -> dict[str, float]:
        """train/pad_frac: share of the computed token slots that are padding; train/pad_frac_saved:
        share of the padded path's token slots that packing did not compute (0 when padded);
        with share_prompt, train/prompt_tokens_shared: prompt tokens the update's forwards did not
        compute because a group's prompt was computed once (all ranks, all minibatches)."""
        out = {
            "train/pad_frac": 1.0 - self.real / self.slots if self.slots else 0.0,
            "train/pad_frac_saved": 1.0 - self.slots / self.padded_slots if self.padded_slots else 0.0,
        }
        if self.groups is not None:
            out["train/prompt_tokens_shared"] = float(self.shared)
        return out


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
    log = _UpdateLog()
    skip = [False] * N
    plan = _WorkPlan(cfg, data.attention_mask.sum(-1).tolist(), W, data.groups)
    # Only needed when a step of this update can come before the one that trips the limit.
    undo = cfg.kl_hard_limit is not None and cfg.ppo_epochs * cfg.num_minibatches > 1
    before = _Snapshot((policy_opt, critic_opt)) if undo else None
    if zero_advantage_skip(cfg, has_critic=models.critic is not None, kl_in_loss=kl_in_loss):
        skip = zero_signal_rows(data.advantages, data.mask).tolist()
    for epoch in range(cfg.ppo_epochs):
        epoch_kl, epoch_tokens = 0.0, 0.0
        for mb in minibatches(epoch_order(N, seed * 1_000_003 + epoch), cfg.num_minibatches):
            # GLOBAL count over every row of the minibatch, skipped ones included: every rank sees all rows
            denom = loss_denom(data.mask[mb], cfg.loss_agg)
            work = [i for i in mb if not skip[i]]
            local = dict.fromkeys(_STEP_SUMS, 0.0)
            for raw in plan.micro_batches(work, models.rank):
                idx, active = active_or_dummy(raw)
                for k, v in _micro_step(models, data, cfg, idx, active, denom, kl_coef, kl_in_loss).items():
                    local[k] += v
            sums = all_reduce_metrics(local, models.device)
            mb_kl = sums["policy/approx_kl"] / max(sums["tokens"], 1.0)  # of the weights as they are now
            if cfg.kl_hard_limit is not None and mb_kl > cfg.kl_hard_limit:
                # Decided before this step is applied; the steps before it made these weights: undone.
                _drop_grads(policy_opt, critic_opt)
                if before is not None:
                    before.restore()
                log.kl_max = max(log.kl_max, mb_kl)
                log.hard_hit = log.early_stop = True
                break
            grad_norm = _optimizer_step(models, policy_opt, critic_opt, cfg, sums)
            log.record(sums, grad_norm)
            epoch_kl += sums["policy/approx_kl"]
            epoch_tokens += sums["tokens"]
            if cfg.target_kl is not None and mb_kl > cfg.kl_stop_multiple * cfg.target_kl:
                log.early_stop = True
                break
        if log.early_stop:
            break
        if (
            cfg.target_kl is not None
            and epoch + 1 < cfg.ppo_epochs
            and epoch_kl / max(epoch_tokens, 1.0) > cfg.target_kl
        ):
            log.early_stop = True
            break
    skipped_rows = [i for i in range(N) if skip[i]]
    return {
        **log.metrics(has_critic=models.critic is not None, kl_in_loss=kl_in_loss),
        **plan.metrics(),
        "train/skipped_zero_adv_samples": float(len(skipped_rows)),
        "train/skipped_zero_adv_tokens": float(masked_count(data.mask[skipped_rows])) if skipped_rows else 0.0,
        **work_token_counts(
            data.mask,
            data.advantages,
            data.attention_mask,
            every_token_has_grad=models.critic is not None or kl_in_loss or cfg.entropy_coef > 0,
        ),
    }


class _Snapshot:
    """This rank's parameter shards and optimizer states at the start of an update (a copy:
    ~3x the parameters' bytes with Adam), put back when the KL hard limit trips."""

    def __init__(self, opts: tuple[torch.optim.Optimizer | None, ...]):
        # The optimizers' parameters, not module.parameters(): after a no-grad forward the FSDP2
        # root module holds unsharded tensors that are freed later (copying into one segfaults).
        opts = tuple(opt for opt in opts if opt is not None)
        self.params = [(p, _local(p).detach().clone()) for opt in opts for g in opt.param_groups for p in g["params"]]
        self.opts = [(opt, copy.deepcopy(opt.state_dict())) for opt in opts]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in self.params:
            _local(p).copy_(saved)  # into this rank's shard (a DTensor-level copy_ segfaults on gloo)
        for opt, state in self.opts:
            opt.load_state_dict(state)


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor), or the tensor itself."""
    return p.to_local() if hasattr(p, "to_local") else p


def zero_advantage_skip(cfg: LearnerConfig, has_critic: bool, kl_in_loss: bool) -> bool:
    """Whether samples with all-zero advantages may skip their forward and backward exactly:
    their loss is then -0 * ratio on every token. A critic's value loss, a KL term in the loss
    and an entropy bonus are not zero on them; target_kl decides the update's length on the
    approx KL of every token, which needs their forward. kl_hard_limit (on by default) does not
    prevent it: that guard then reads the KL of the samples that ran, which only decides whether
    a blown-up run halts, never the update of a healthy one."""
    exact = not has_critic and not kl_in_loss and cfg.entropy_coef == 0 and cfg.target_kl is None
    return cfg.skip_zero_advantage and exact


def _optimizer_step(
    models: Models,
    policy_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer | None,
    cfg: LearnerConfig,
    sums: dict[str, float],
) -> float | None:
    """Clip and apply the accumulated gradients unless the loss or a norm is not finite;
    returns the policy's pre-clip gradient norm, or None when the step was skipped."""
    norm = clip_grad_norm(models.policy, cfg.max_grad_norm)
    critic_norm = clip_grad_norm(models.critic, cfg.max_grad_norm) if models.critic is not None else 0.0
    # clip_grad_norm_ returns a NaN norm unchanged and would let the step through.
    finite = all(math.isfinite(sums[k]) for k in _LOSSES) and math.isfinite(norm) and math.isfinite(critic_norm)
    if finite:
        policy_opt.step()
        if critic_opt is not None:
            critic_opt.step()
    _drop_grads(policy_opt, critic_opt)
    return norm if finite else None


def _drop_grads(*opts: torch.optim.Optimizer | None) -> None:
    for opt in opts:
        if opt is not None:
            opt.zero_grad(set_to_none=True)


def _micro_step(
    models: Models,
    data: RolloutTensors,
    cfg: LearnerConfig,
    idx: list[int],
    active: bool,
    denom: float,
    kl_coef: float,
    kl_in_loss: bool,
) -> dict[str, float]:
    """Forward + backward of one micro-batch; returns its local sums by name (_STEP_SUMS)."""
    mask = data.mask[idx] * float(active)  # a dummy micro-batch weighs 0 but still runs
    ids, am = data.input_ids[idx], data.attention_mask[idx]
    groups = data.groups.select(idx) if data.groups is not None else None
    want_entropy_grad = cfg.entropy_coef > 0
    with models.dropout_in_grad_pass(models.policy):  # LoRA dropout; a no-op otherwise
        logprobs, entropy = policy_logprobs(
            models.policy,
            ids,
            am,
            with_entropy=True,
            entropy_grad=want_entropy_grad,
            packed=models.packed,
            groups=groups,
        )
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
        gae_cfg = cfg.advantage  # the variant that has a critic carries its value-loss knobs
        with models.dropout_in_grad_pass(models.critic):
            values = critic_values(models.critic, ids, am, packed=models.packed, groups=groups)
        vl, vm = value_loss(
            values, data.old_values[idx], data.returns[idx], mask, gae_cfg.value_clip_eps, cfg.loss_agg, denom
        )
        loss = loss + gae_cfg.vf_coef * vl
    # FSDP2 averages gradients over ranks; the loss is this rank's share of the global
    # loss, so scale by world_size to turn that average back into the sum.
    (loss * models.world_size).backward()
    ntok = float(mask.sum())
    return {
        "loss/policy": float(pm["loss/policy"]),
        "loss/value": float(vl.detach()),
        "loss/kl": float(kl_loss.detach()),
        "policy/clipfrac": pm["policy/clipfrac"] * ntok,
        "policy/approx_kl": pm["policy/approx_kl"] * ntok,
        "entropy/mean": float(masked_sum(entropy.detach(), mask)),
        "value/clipfrac": vm["value/clipfrac"] * ntok,
        "tokens": ntok,
    }
