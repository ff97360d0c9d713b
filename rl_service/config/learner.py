"""`learner:` the PPO learner on FSDP2; the advantage estimator is a variant keyed on `type`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from rl_service.config.base import Resources, Section


class GAEConfig(Section):
    """Generalised advantage estimation with a learned critic (value model)."""

    type: Literal["gae"] = "gae"
    """`gae`: per-token advantages from a critic; the critic is built only for this estimator."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    whiten: bool = True
    """Whiten the advantages over the whole batch (all learner processes). Group estimators
    normalise within their groups instead (whitening would undo dr_grpo's choice)."""
    critic_lr: float = Field(1e-3, gt=0)
    """Critic learning rate (AdamW)."""
    value_clip_eps: float = Field(0.2, gt=0)
    """Clip range of the value update around the old values."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss (critic has its own optimizer; kept for reporting scale)."""

    @property
    def uses_critic(self) -> bool:
        return True


class GroupAdvantageConfig(Section):
    """Critic-free estimators: each sample's advantage comes from the rewards of its group
    (the rollout.samples_per_prompt samples of one prompt), normalised within the group."""

    type: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"]
    """`grpo` (mean/std of the group), `dr_grpo` (mean only), `rloo` (leave-one-out mean),
    `reinforce_pp` (group mean, then batch whitening)."""

    @property
    def uses_critic(self) -> bool:
        return False


AdvantageConfig = Annotated[GAEConfig | GroupAdvantageConfig, Field(discriminator="type")]

# The GAE fields were flat fields of `learner:` before the estimator had its own section
# (old name -> name in GAEConfig). The old schema ignored them with the group estimators.
LEGACY_GAE_FIELDS = {
    "gamma": "gamma",
    "lam": "lam",
    "whiten_advantages": "whiten",
    "critic_lr": "critic_lr",
    "value_clip_eps": "value_clip_eps",
    "vf_coef": "vf_coef",
}


def _legacy_advantage(data: Any) -> Any:
    """`advantage: grpo` (a bare name) and flat GAE fields -> the nested variant."""
    if not isinstance(data, dict) or isinstance(data.get("advantage"), BaseModel):
        return data
    data = dict(data)
    adv = data.get("advantage", "gae")
    adv = {"type": adv} if isinstance(adv, str) else dict(adv)
    adv.setdefault("type", "gae")
    flat = {new: data.pop(old) for old, new in LEGACY_GAE_FIELDS.items() if old in data}
    if adv["type"] == "gae":
        adv = {**flat, **adv}
    elif isinstance(data.get("advantage", "gae"), dict):  # new layout: GAE fields there are errors
        data.update({old: flat[new] for old, new in LEGACY_GAE_FIELDS.items() if new in flat})
    data["advantage"] = adv
    return data


class KLConfig(Section):
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token estimator of KL(policy || reference)."""
    placement: Literal["reward", "loss"] = "reward"
    """`reward`: subtract coef*KL from per-token rewards (classic RLHF PPO);
    `loss`: add coef*KL to the policy loss (GRPO style)."""
    coef: float = Field(0.0, ge=0)
    """Initial KL coefficient (0 disables the penalty but KL is still measured)."""
    target: float | None = None
    """If set, the adaptive controller steers measured KL toward this value."""
    horizon: int = Field(10000, ge=1)
    """Adaptive controller horizon in samples (Ziegler et al.)."""
    measure_every: int = Field(1, ge=0)
    """With coef 0 and no target the reference model only feeds the `kl/*` metrics: run its
    no-grad forward pass every this many updates (the others report no `kl/*`). 0 = never,
    and the reference model is not even built (as TRL and OpenRLHF do with a zero KL coef).
    While the KL is penalised the reference runs on every update whatever this says."""

    @property
    def penalised(self) -> bool:
        """True when the KL enters the reward or loss (now or once the adaptive controller moves)."""
        return self.coef > 0 or self.target is not None


class TRPOConfig(Section):
    """learner.optimizer=trpo: one natural-gradient step per update (learner/trpo_update.py)."""

    max_kl: float = Field(0.01, gt=0)
    """Trust region: the mean KL(pi_old || pi_new) per response token an accepted step may
    reach (measured in the line search with the k3 estimator on the batch's sampled tokens)."""
    cg_iters: int = Field(10, ge=1)
    """Conjugate-gradient iterations (Fisher-vector products) solving F x = g."""
    damping: float = Field(0.1, ge=0)
    """Added to the Fisher: (F + damping I) x = g, which keeps CG stable where F is near singular."""
    fvp_fraction: float = Field(0.25, gt=0, le=1)
    """Share of the batch's rows (every k-th) the Fisher-vector products are computed on: the
    Fisher is an average, a subsample estimates it for a fraction of the cost."""
    backtrack: float = Field(0.5, gt=0, lt=1)
    """Line search: each retry takes this fraction of the previous step."""
    max_backtracks: int = Field(10, ge=0)
    """Line search: retries after the full step before the update is given up (weights kept)."""
    accept_ratio: float = Field(0.1, ge=0)
    """Line search: a step must gain at least this share of its linear-model gain g . step."""


class LearnerConfig(Section):
    num_workers: int = Field(2, ge=1)
    """FSDP2 processes (gloo on CPU, NCCL on GPU); gang scheduled in a placement group."""
    resources: Resources = Resources()
    """Resources per learner process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl when the replica has a GPU, else gloo."""
    advantage: AdvantageConfig = GAEConfig()
    """Advantage estimator, by `type` (gae | grpo | dr_grpo | rloo | reinforce_pp); its own fields
    sit beside the type. The old form `advantage: grpo` with flat `gamma`, `lam`,
    `whiten_advantages`, `critic_lr`, `value_clip_eps`, `vf_coef` still loads."""
    lr: float = Field(1e-4, gt=0)
    """Policy learning rate (AdamW)."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear warmup of the policy learning rate over this many PPO updates (0 = none)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay for both models."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each batch."""
    num_minibatches: int = Field(1, ge=1)
    """Optimizer steps per epoch (the batch is split into this many minibatches)."""
    micro_batch_size: int = Field(256, ge=1)
    """Sequences per forward/backward on one process (gradient accumulation below a minibatch)."""
    max_tokens_per_microbatch: int | None = Field(None, ge=2)
    """Sequence packing: None (the default) = padded micro-batches of `micro_batch_size` rows.
    A number = micro-batches of at most this many tokens per process (a longer sample runs
    alone), each run as ONE row of its samples back to back, with per-sample position ids
    and attention that never crosses a sample: no padding is computed (`train/pad_frac_saved`
    says how much the padded path would have). Used by every learner forward (old policy,
    reference, critic, update); `micro_batch_size` is then ignored. The model must honour
    packed position ids (transformers' Llama, Qwen2, Mistral, GPT-2 do, with sdpa, eager and
    flash attention); the learner checks that at setup and refuses a model that does not.
    Attention runs per sample (learner/attention.py), not as one masked attention over the
    whole row, so it costs what the padded path's does."""
    share_prompt: bool = False
    """Shared-prompt packing (needs `max_tokens_per_microbatch`): the samples of one prompt's
    group (`rollout.samples_per_prompt` of them, token-identical prompts) go into one packed
    micro-batch as [prompt, completion_1, ..., completion_n], the prompt computed once and each
    completion attending to it (block mask) -- in every learner forward and backward (old
    policy, reference, critic, update); logprobs and gradients are those of the unshared path.
    A group whose prompts differ (multi-turn episodes) runs unshared, counted in
    `train/share_refused_groups`; `train/prompt_tokens_shared` counts the prompt tokens not
    computed. Needs packing because a shared prompt only exists inside a packed row."""
    behavior_logprobs: Literal["rollout", "learner"] = "rollout"
    """Old logprobs in the PPO ratio: `rollout` = the engine's sampling logprobs (exact behaviour
    policy, corrects for max_policy_lag; equal to the learner's in fp32), `learner` = recomputed
    with the current weights before the update (ignores staleness)."""
    logprob_check_every: int = Field(1, ge=0)
    """With behavior_logprobs=rollout: recompute the old policy's logprobs on the learner every
    this many updates, to check them against the engine's (`rollout/logprob_diff_*`, and the
    KL to the reference from the learner's side). The other updates skip that no-grad forward
    pass (about a quarter of a learner step) and use the engine's logprobs. 0 = never check."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO ratio clip range."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus weight."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping by global norm."""
    skip_zero_advantage: bool = True
    """Skip the forward and backward of samples whose advantage is exactly 0 on every token (a
    group estimator's all-equal-reward groups): their loss and gradient are exactly 0, and their
    tokens still count in the loss normaliser (token_mean and seq_mean alike), so the update is
    the same up to float rounding. Only where that is exact: no critic (group estimators), no
    KL term in the loss (`kl.placement: loss` with a coefficient > 0), `entropy_coef` 0, no
    `target_kl` (it reads the approx KL of every token); otherwise every sample runs.
    `kl_hard_limit` then reads the approx KL of the samples that ran. The token means
    policy/approx_kl, policy/clipfrac and entropy/mean then
    cover the samples that ran; the skipped ones are counted in `train/skipped_zero_adv_samples` and
    `train/skipped_zero_adv_tokens`."""
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    """Loss aggregation: mean over all response tokens, or mean of per-sequence means."""
    kl: KLConfig = KLConfig()
    """Penalty toward the frozen reference policy."""
    target_kl: float | None = None
    """Trust region: stop the remaining PPO epochs once approx KL to the old policy passes this."""
    kl_stop_multiple: float = Field(1.5, gt=0)
    """With target_kl set: a minibatch whose approx KL to the old policy exceeds
    kl_stop_multiple * target_kl ends this update at once (the remaining minibatches and epochs)."""
    optimizer: Literal["adamw", "trpo"] = "adamw"
    """How the policy is updated. `adamw`: PPO's clipped surrogate, ppo_epochs x num_minibatches
    AdamW steps. `trpo`: one natural-gradient step per update, conjugate gradient on
    Fisher-vector products (double backward of the mean KL) and a backtracking line search
    that enforces `trpo.max_kl` (Schulman et al. 2015); lr, clip_eps, ppo_epochs,
    num_minibatches, target_kl and kl_hard_limit do not apply to the policy (the line search
    bounds its KL; the critic still trains with AdamW as in PPO).
    The Fisher-vector products need the policy unsharded: TRPO runs on one learner process
    (learner.num_workers 1, no FSDP2 sharding of the policy), padded micro-batches (no packing)."""
    trpo: TRPOConfig = TRPOConfig()
    """learner.optimizer=trpo's settings."""
    kl_hard_limit: float | None = Field(1.0, gt=0)
    """Halt the run (with a checkpoint and a message) when any minibatch's approx KL to the
    old policy exceeds this (per token, nats): the policy has blown up. Decided before that
    minibatch's step; the update's earlier steps are undone, so the halt checkpoint holds the
    policy that generated the batch. 1.0 is far above a healthy update's KL (~1e-3..1e-2).
    None = no hard limit."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return _legacy_advantage(data)

    @model_validator(mode="after")
    def _trpo_runs_alone(self) -> LearnerConfig:
        if self.optimizer == "trpo":
            why = {
                "learner.num_workers > 1": self.num_workers > 1,
                "learner.max_tokens_per_microbatch (packing)": self.max_tokens_per_microbatch is not None,
                "learner.entropy_coef > 0": self.entropy_coef > 0,
            }
            bad = [k for k, v in why.items() if v]
            if bad:
                raise ValueError(
                    f"learner.optimizer=trpo runs on one unsharded learner process with padded "
                    f"micro-batches and no entropy bonus; drop {', '.join(bad)}"
                )
        return self

    @model_validator(mode="after")
    def _share_needs_packing(self) -> LearnerConfig:
        if self.share_prompt and self.max_tokens_per_microbatch is None:
            raise ValueError(
                "learner.share_prompt needs sequence packing: set learner.max_tokens_per_microbatch (e.g. 4096)"
            )
        return self
