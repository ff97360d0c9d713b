"""Typed experiment config: one YAML per experiment plus dotted overrides.

Every section is a pydantic model with ``extra="forbid"`` (a typo is an error, not a
silent default) and a docstring under each field. Each component receives only its
own section. This module never imports ray, vllm or torch: a bad config must fail in
well under a second, before anything heavy starts.

    cfg = load_config("configs/quickstart.yaml", ["learner.lr=1e-5", "rollout.num_workers=2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_M = TypeVar("_M", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key (CLI exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class Resources(_Section):
    """What one replica of a component asks Ray for."""

    num_cpus: float = Field(1.0, ge=0)
    """Logical CPUs per replica (fractions allowed; Ray sets OMP threads from this)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    custom: dict[str, float] = {}
    """Custom resource labels, e.g. {"rollout": 1} to land on nodes labelled for rollout."""


class TaskConfig(_Section):
    name: Literal["addition", "guess_number"] = "addition"
    """`addition`: single-turn verifiable task (prompts, answers, built-in verifier).
    `guess_number`: multi-turn environment (rl_service/envs/); use it with
    reward.fn = env_return (built-in)."""
    digits: int = Field(2, ge=1, le=6)
    """addition: operands have up to this many digits (prompt `37+48=`, answer `85`)."""
    num_eval: int = Field(200, ge=1)
    """Size of the fixed held-out set: greedy exact-match accuracy (addition) or greedy
    episode success rate (guess_number)."""
    seed: int = 1234
    """Seed of the train/held-out split (independent of the run seed)."""
    guess_low: int = Field(0, ge=0)
    """guess_number: smallest possible secret."""
    guess_high: int = Field(9, ge=1, le=999)
    """guess_number: largest possible secret."""
    max_turns: int = Field(4, ge=1, le=16)
    """guess_number: guesses per episode before it is truncated."""
    turn_penalty: float = Field(0.0, ge=0, le=1)
    """guess_number: a hit on turn k is worth 1 - turn_penalty * (k - 1)."""

    @model_validator(mode="after")
    def _guess_range(self) -> TaskConfig:
        if self.name == "guess_number" and self.guess_low >= self.guess_high:
            raise ValueError(f"task.guess_low ({self.guess_low}) must be < task.guess_high ({self.guess_high})")
        return self


class TinyModelConfig(_Section):
    """Shape of the small Llama-style model the project builds itself."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of decoder blocks."""
    num_heads: int = 4
    """Attention heads (head_dim = hidden_size / num_heads)."""
    intermediate_size: int = 512
    """MLP width."""
    vocab_size: int = 320
    """Target vocabulary of the byte-level BPE tokenizer trained locally."""
    max_position_embeddings: int = 64
    """Longest sequence (prompt + completion) the model supports."""


class SFTConfig(_Section):
    """Warm start: supervised fine-tuning on the task until a base accuracy is reached."""

    max_steps: int = Field(3000, ge=0)
    """Upper bound on SFT optimizer steps (0 = keep the random init)."""
    batch_size: int = Field(128, ge=1)
    """Examples per SFT step."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate for SFT."""
    target_accuracy: float = Field(0.3, ge=0, le=1)
    """Stop SFT once held-out greedy exact match reaches this (leaves RL room to improve)."""
    eval_every: int = Field(25, ge=1)
    """Steps between held-out accuracy checks during SFT."""


class ModelConfig(_Section):
    path: str | None = None
    """An HF model directory to start from. None = build the tiny model (cached)."""
    cache_dir: str = ".cache/models"
    """Where built models are saved and reused (key = hash of task+build+sft config)."""
    build: TinyModelConfig = TinyModelConfig()
    """Shape of the built model (ignored when `path` is set)."""
    sft: SFTConfig = SFTConfig()
    """Warm start of the built model (ignored when `path` is set)."""

    @model_validator(mode="after")
    def _path_exists(self) -> ModelConfig:
        if self.path is not None and not (Path(self.path) / "config.json").is_file():
            raise ValueError(f"model.path: {self.path!r} is not an HF model directory (no config.json)")
        return self


class RolloutConfig(_Section):
    engine: Literal["vllm", "hf"] = "vllm"
    """Generation engine behind the Engine protocol: vLLM `LLM` in-process, or HF generate."""
    num_workers: int = Field(2, ge=1)
    """Rollout worker replicas (each owns one engine)."""
    resources: Resources = Resources()
    """Resources per rollout worker."""
    samples_per_prompt: int = Field(8, ge=1)
    """Completions sampled per prompt (the group size for group estimators)."""
    max_new_tokens: int = Field(8, ge=1)
    """Completion length cap."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature for training rollouts (eval is always greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Engine dtype; float32 keeps rollout logprobs equal to the learner's on CPU."""
    kv_cache_gib: float = Field(0.25, gt=0)
    """vLLM CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE)."""
    prompts_per_batch: int = Field(16, ge=1)
    """Prompts per PromptBatch put on the prompt queue (the unit of work of a worker)."""
    verify_tolerance: float = Field(1e-4, gt=0)
    """Max |logprob diff| between engine and learner on the probe after a weight sync."""


class RewardConfig(_Section):
    fn: str = "addition_exact"
    """Built-in verifier by name, or a user function as `module:fn` or `path/to/file.py:fn`
    with signature fn(prompt: str, completion: str, **metadata) -> float."""
    num_scorers: int = Field(1, ge=1)
    """Reward scorer replicas."""
    resources: Resources = Resources(num_cpus=0.5)
    """Resources per scorer."""
    on_error: Literal["fail", "drop"] = "drop"
    """When the function raises or returns NaN/inf/non-number: fail the run, or drop the
    sample and count it (`samples/dropped_invalid`). Never scored 0 silently."""
    model: str | None = None
    """A reward model directory written by `rl-service train-rm` (an HF 1-output sequence
    classifier): the reward of a sample is its score of `prompt + completion`, one batched
    forward per batch on the scorer's CPU. Replaces `fn` (setting both is an error)."""
    teacher: str | None = None
    """On-policy distillation: a causal-LM directory sharing the policy's tokenizer. Every
    generated token gets the per-token reward teacher_coef * (teacher logprob - student
    logprob), added to the scalar reward (use fn `zero` for distillation alone)."""
    teacher_coef: float = Field(1.0, gt=0)
    """Weight of the teacher's per-token reward."""

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if self.model is not None and self.fn != "addition_exact":
            raise ValueError(
                f"model and a custom fn ({self.fn!r}) are mutually exclusive: the reward model replaces the function"
            )
        for key in ("model", "teacher"):
            d = getattr(self, key)
            if d is not None and not (Path(d) / "config.json").is_file():
                hint = " (train one: rl-service train-rm configs/rm.yaml)" if key == "model" else ""
                raise ValueError(f"{key}: {d!r} is not an HF model directory (no config.json){hint}")
        return self


class KLConfig(_Section):
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


class LearnerConfig(_Section):
    num_workers: int = Field(2, ge=1)
    """FSDP2 processes (gloo on CPU, NCCL on GPU); gang scheduled in a placement group."""
    resources: Resources = Resources()
    """Resources per learner process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl when the replica has a GPU, else gloo."""
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = "gae"
    """Advantage estimator; the critic is built only for `gae`."""
    lr: float = Field(1e-4, gt=0)
    """Policy learning rate (AdamW)."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear warmup of the policy learning rate over this many PPO updates (0 = none)."""
    critic_lr: float = Field(1e-3, gt=0)
    """Critic learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay for both models."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each batch."""
    num_minibatches: int = Field(1, ge=1)
    """Optimizer steps per epoch (the batch is split into this many minibatches)."""
    micro_batch_size: int = Field(256, ge=1)
    """Sequences per forward/backward on one process (gradient accumulation below a minibatch)."""
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
    value_clip_eps: float = Field(0.2, gt=0)
    """Clip range of the value update around the old values."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss (critic has its own optimizer; kept for reporting scale)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus weight."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping by global norm."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount for GAE."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    whiten_advantages: bool = True
    """Whiten GAE advantages over the whole batch (all learner processes). Group estimators
    normalise within their groups instead (whitening would undo dr_grpo's choice)."""
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    """Loss aggregation: mean over all response tokens, or mean of per-sequence means."""
    kl: KLConfig = KLConfig()
    """Penalty toward the frozen reference policy."""
    target_kl: float | None = None
    """Trust region: stop the remaining PPO epochs once approx KL to the old policy passes this."""
    kl_stop_multiple: float = Field(1.5, gt=0)
    """With target_kl set: a minibatch whose approx KL to the old policy exceeds
    kl_stop_multiple * target_kl ends this update at once (the remaining minibatches and epochs)."""
    kl_hard_limit: float | None = Field(None, gt=0)
    """Halt the run (with a checkpoint and a message) when any minibatch's approx KL to the
    old policy exceeds this: the policy has blown up. None = no hard limit."""


class TrainConfig(_Section):
    steps: int = Field(20, ge=1)
    """Learner updates (= policy versions published)."""
    prompts_per_step: int = Field(64, ge=1)
    """Prompts per update; the batch holds prompts_per_step * samples_per_prompt samples."""
    max_policy_lag: int = Field(0, ge=0)
    """0 = strictly on-policy; k >= 1 lets generation run k versions ahead of training
    and drops (and counts) samples older than k versions."""
    queue_size: int = Field(8, ge=1)
    """Capacity of each bounded queue, in batches (backpressure)."""
    eval_every: int = Field(0, ge=0)
    """Held-out accuracy every N steps (0 = only at start and end)."""
    timeout_s: float = Field(600.0, gt=0)
    """Give up on a step whose batches have not arrived after this long."""
    checkpoint_every: int = Field(0, ge=0)
    """Write a checkpoint every N steps (0 = only at the end) under <run_dir>/checkpoints/.
    A checkpoint is also written at the end and whenever a guard halts the run."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk; older ones are deleted after a newer one is complete."""
    max_nan_steps: int = Field(3, ge=1)
    """Halt the run (with a checkpoint) after this many optimizer steps in a row were skipped
    for a NaN/inf loss or gradient norm."""
    max_restarts: int = Field(3, ge=0)
    """Component failures survived per run: each rollout worker, reward scorer and queue may be
    replaced this many times (in-flight batches regenerated), and the learner group restarted
    this many times from the last checkpoint, before the run fails naming what died."""


class ServeConfig(_Section):
    """The OpenAI-compatible Ray Serve endpoint (owned by rl_service/serving/)."""

    enabled: bool = False
    """Serve the current policy while training and hot-swap each synced version."""
    host: str = "127.0.0.1"
    """Bind address (loopback by default)."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    model_name: str = "policy"
    """Model id clients send; responses report `<model_name>@v<policy_version>`."""
    engine: Literal["vllm", "hf"] = "vllm"
    """Engine inside each replica: vLLM `LLM` in-process, or HF generate."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Engine dtype (float32 keeps served logprobs equal to the learner's)."""
    kv_cache_gib: float = Field(0.25, gt=0)
    """vLLM KV-cache size per replica."""
    threads: int = Field(1, ge=1)
    """Intra-op CPU threads of each replica's engine."""
    num_cpus: float = Field(0.0, ge=0)
    """Logical CPUs Ray reserves per replica (0 = none, so serving fits beside training)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    api_key: str | None = None
    """Bearer key required on every /v1 route (None = $RL_SERVICE_API_KEY, unset = no auth)."""
    max_tokens: int = Field(64, ge=1)
    """Cap on `max_tokens` per request (larger asks are rejected with 400, not clipped)."""
    default_max_tokens: int = Field(16, ge=1)
    """`max_tokens` when a request gives none (clipped to the context left after the prompt)."""
    max_n: int = Field(8, ge=1)
    """Cap on completions per request (`n`)."""
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Request bodies larger than this are rejected with 413 before being parsed."""
    num_replicas: int = Field(1, ge=1)
    """Fixed replica count (ignored when autoscaling bounds are set)."""
    min_replicas: int | None = Field(None, ge=0)
    """Autoscaling lower bound; set with max_replicas to enable autoscaling."""
    max_replicas: int | None = Field(None, ge=1)
    """Autoscaling upper bound."""
    target_ongoing_requests: float = Field(2.0, gt=0)
    """Autoscaling target of ongoing requests per replica."""
    max_ongoing_requests: int = Field(8, ge=1)
    """Requests a replica runs at once (engine calls); more wait in its queue."""
    max_queued_requests: int = Field(16, ge=0)
    """Requests a replica holds waiting for its engine; past ongoing + queued the app answers 503 in
    the OpenAI error envelope (Serve's own limits sit above, as the outer bound)."""
    update_every: int = Field(1, ge=1)
    """While training: swap to every k-th synced policy version."""
    feedback_db: str = "runs/feedback.sqlite"
    """SQLite file (WAL) for completions and human feedback."""
    feedback_dsn: str | None = None
    """PostgreSQL DSN; when set it is used instead of feedback_db (needs psycopg)."""

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("serve.min_replicas and serve.max_replicas are set together (autoscaling)")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must be <= serve.max_replicas")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("serve.default_max_tokens must be <= serve.max_tokens")
        return self


class TrackingConfig(_Section):
    """Where metrics go besides runs/<name>/metrics.jsonl (owned by rl_service/tracking/)."""

    wandb: bool = False
    """Log every metric to Weights & Biases (offline unless WANDB_API_KEY is set)."""
    wandb_project: str = "rl_service"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user); None = the key's default entity."""
    wandb_run_id: str | None = None
    """Fixed W&B run id. None = generated once and kept in <run_dir>/wandb_run_id, so a run
    resumed in the same directory continues the same W&B run (resume="allow")."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """auto = online when WANDB_API_KEY is set, else offline (no network; `wandb sync` later)."""
    wandb_dir: str | None = None
    """Where W&B writes (its `wandb/` folder goes inside). None = $WANDB_DIR, else the run dir."""
    ray_metrics: bool = True
    """Export per-step gauges/counters with ray.util.metrics (the cluster's Prometheus endpoint)."""


class RayConfig(_Section):
    address: str | None = None
    """Attach to this cluster (or $RAY_ADDRESS); None = start an embedded local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of the embedded Ray (None = enough for the requested components)."""


class Config(_Section):
    name: str = "run"
    """Run name: outputs go to `<run_root>/<name>/`."""
    run_root: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed for prompt order, sampling and init."""
    task: TaskConfig = TaskConfig()
    """The task: prompts, held-out set and built-in verifier."""
    model: ModelConfig = ModelConfig()
    """Where the policy comes from."""
    rollout: RolloutConfig = RolloutConfig()
    """Rollout workers and their engines."""
    reward: RewardConfig = RewardConfig()
    """Reward scorers."""
    learner: LearnerConfig = LearnerConfig()
    """PPO learner on FSDP2."""
    train: TrainConfig = TrainConfig()
    """The loop: steps, batch, staleness, queues."""
    ray: RayConfig = RayConfig()
    """How to reach Ray."""
    serve: ServeConfig = ServeConfig()
    """Serving the policy over HTTP."""
    tracking: TrackingConfig = TrackingConfig()
    """Metrics sinks."""

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        lc, rc = self.learner, self.rollout
        if lc.advantage != "gae" and rc.samples_per_prompt < 2:
            raise ValueError(f"learner.advantage={lc.advantage} needs rollout.samples_per_prompt >= 2 (a group)")
        if self.train.prompts_per_step % rc.prompts_per_batch:
            raise ValueError(
                f"train.prompts_per_step ({self.train.prompts_per_step}) must be divisible by "
                f"rollout.prompts_per_batch ({rc.prompts_per_batch})"
            )
        if self.train.prompts_per_step * rc.samples_per_prompt < lc.num_workers * lc.num_minibatches:
            raise ValueError(
                "train.prompts_per_step * rollout.samples_per_prompt must be >= "
                "learner.num_workers * learner.num_minibatches (every process needs samples)"
            )
        in_flight = (1 + self.train.max_policy_lag) * (self.train.prompts_per_step // rc.prompts_per_batch)
        if in_flight > self.train.queue_size:
            raise ValueError(
                f"train.queue_size ({self.train.queue_size}) must hold the {in_flight} prompt batches "
                "in flight ((1 + max_policy_lag) * prompts_per_step / prompts_per_batch)"
            )
        if lc.backend == "nccl" and lc.resources.num_gpus == 0:
            raise ValueError("learner.backend=nccl needs learner.resources.num_gpus > 0")
        if (
            self.model.path is None
            and rc.max_new_tokens + 2 * self.task.digits + 2 > self.model.build.max_position_embeddings
        ):
            raise ValueError("rollout.max_new_tokens plus the prompt exceeds model.build.max_position_embeddings")
        return self


class PreferenceConfig(_Section):
    """Training from preference pairs {prompt, chosen, rejected}: `train-rm` and `train-dpo`."""

    num_train_pairs: int = Field(3000, ge=1)
    """Synthetic task only: training pairs generated from the addition task's training split
    (held-out pairs come from its held-out prompts, task.num_eval of them)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Pairs from a file or the feedback database: this fraction is held out, chosen by a hash
    of the prompt (deterministic; every pair of one prompt lands on the same side)."""
    num_workers: int = Field(1, ge=1)
    """FSDP2 processes (torch.multiprocessing, gloo on CPU / NCCL on GPU); 1 = in this process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl when a GPU is visible, else gloo."""
    steps: int = Field(300, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(64, ge=1)
    """Pairs per optimizer step (over all processes)."""
    lr: float = Field(3e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_steps: int = Field(10, ge=0)
    """Linear learning-rate warmup."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping by global norm."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Probability that a label is flipped (noisy preferences); 0 = plain NLL."""
    margin: float = Field(0.0, ge=0)
    """train-rm: the chosen reward must beat the rejected one by this margin."""
    rm_extra_layers: int = Field(0, ge=0)
    """train-rm: decoder layers added on top of the policy's, initialised as the identity
    (experimental; 2 extra layers gave no measured gain on the synthetic task)."""
    rm_lm_coef: float = Field(0.0, ge=0)
    """train-rm: weight of an auxiliary next-token loss on the chosen completions, through the
    policy's LM head on the reward model's backbone (dropped when saving); 0 = off."""
    beta: float = Field(0.1, gt=0)
    """train-dpo: strength of the implicit KL to the frozen reference."""
    eval_every: int = Field(50, ge=1)
    """Steps between held-out evaluations."""
    threads: int = Field(1, ge=1)
    """torch intra-op threads per process."""


class PreferenceRunConfig(_Section):
    """Top-level config of `rl-service train-rm` / `train-dpo` (configs/rm.yaml, configs/dpo.yaml)."""

    name: str = "rm"
    """Run name: the model and metrics go to `<run_root>/<name>/`."""
    run_root: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed for init, data order and synthetic wrong answers."""
    task: TaskConfig = TaskConfig()
    """The addition task (synthetic preference data, held-out split)."""
    model: ModelConfig = ModelConfig()
    """The policy the reward model / DPO starts from (same cache as `train`)."""
    preference: PreferenceConfig = PreferenceConfig()
    """The preference training loop."""


# ---------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` strings -> nested dict; values parsed as YAML scalars (`1e-5`, `true`, `[1,2]`)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. learner.lr=1e-5)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        # YAML reads "1e-5" as a string; accept float-looking strings as floats.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling; see rl_service/config/)"
    if e["type"] in ("value_error", "assertion_error") and not e["loc"]:
        return msg
    return (
        f"{loc}: {msg} (got {e.get('input')!r})"
        if "input" in e and not isinstance(e.get("input"), dict)
        else f"{loc}: {msg}"
    )


def validate(cls: type[_M], data: dict[str, Any]) -> _M:
    """Validate a top-level config model; the first problem becomes a one-line ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_first_error(err)) from None


def read_config_data(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """YAML file (or {} when path is None) with the dotted overrides merged in, not yet validated."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    return _merge(data, parse_overrides(overrides or []))


def build_config(data: dict[str, Any]) -> Config:
    cfg = validate(Config, data)
    check_reward_fn(cfg.reward.fn)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or defaults when path is None), apply dotted overrides, validate."""
    return build_config(read_config_data(path, overrides))


def check_reward_fn(spec: str) -> None:
    """Fail early (before Ray) if a `module:fn` / `file.py:fn` reward cannot be resolved."""
    if ":" not in spec:
        from rl_service.reward.functions import BUILTIN_NAMES  # no heavy imports there

        if spec not in BUILTIN_NAMES:
            raise ConfigError(
                f"reward.fn: unknown built-in {spec!r} (known: {', '.join(sorted(BUILTIN_NAMES))}; "
                "or give module:fn / path/to/file.py:fn)"
            )
        return
    from rl_service.reward.functions import load_user_fn

    try:
        load_user_fn(spec)
    except Exception as err:  # noqa: BLE001 - any import problem is a config problem
        raise ConfigError(f"reward.fn: cannot load {spec!r}: {type(err).__name__}: {err}") from None


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
