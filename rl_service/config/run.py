"""The top-level configs: `Config` (rl-service train) and `PreferenceRunConfig` (train-rm/-dpo).

Both start with the same header (run name, output root, seed, task, model); each component
then receives only its own section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from rl_service.config.base import Section
from rl_service.config.eval import EvalConfig
from rl_service.config.learner import LearnerConfig
from rl_service.config.model import ModelConfig
from rl_service.config.preference import PreferenceConfig, RMTrainConfig
from rl_service.config.reward import RewardConfig
from rl_service.config.rollout import RolloutConfig
from rl_service.config.serve import ServeConfig
from rl_service.config.task import AdditionConfig, TaskConfig, default_task_name
from rl_service.config.tracking import TrackingConfig
from rl_service.config.train import RayConfig, TrainConfig


class RunHeader(Section):
    name: str = "run"
    """Run name: outputs go to `<run_root>/<name>/`."""
    run_root: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed for prompt order, sampling and init."""
    task: TaskConfig = AdditionConfig()
    """The task: prompts, held-out set and built-in verifier (variant by `task.name`)."""
    model: ModelConfig = ModelConfig()
    """Where the policy comes from."""

    @model_validator(mode="before")
    @classmethod
    def _task_name(cls, data: Any) -> Any:
        return default_task_name(data)


class Config(RunHeader):
    """`rl-service train`: the whole distributed PPO run."""

    rollout: RolloutConfig = RolloutConfig()
    """Rollout workers and their engines."""
    reward: RewardConfig = RewardConfig()
    """Reward scorers."""
    learner: LearnerConfig = LearnerConfig()
    """PPO learner on FSDP2."""
    train: TrainConfig = TrainConfig()
    """The loop: steps, batch, staleness, queues."""
    eval: EvalConfig = EvalConfig()
    """Held-out metrics beyond `eval/accuracy` (ROUGE-L, BLEU, perplexity)."""
    ray: RayConfig = RayConfig()
    """How to reach Ray."""
    serve: ServeConfig = ServeConfig()
    """Serving the policy over HTTP."""
    tracking: TrackingConfig = TrackingConfig()
    """Metrics sinks."""
    placement: Literal["split", "colocated"] = "split"
    """Where the rollout engines run. `split` (the default, for clusters): rollout workers and
    learner ranks are separate actors with their own resources; weights go through the object
    store. `colocated` (one node): each learner rank's process also hosts a rollout engine, and
    the two take turns on the same cores (generate, then train, then the weights are handed to
    the engine in-process, verified as in `split`). Each process reserves learner.resources and
    its engine runs with those threads (rollout.resources is not used); needs
    train.max_policy_lag 0, rollout.num_workers == learner.num_workers and serve.enabled false.
    See docs/architecture.md "Colocated placement"."""

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        lc, rc, tc = self.learner, self.rollout, self.train
        if not lc.advantage.uses_critic and rc.samples_per_prompt < 2:
            raise ValueError(f"learner.advantage={lc.advantage.type} needs rollout.samples_per_prompt >= 2 (a group)")
        if tc.prompts_per_step % rc.prompts_per_batch:
            raise ValueError(
                f"train.prompts_per_step ({tc.prompts_per_step}) must be divisible by "
                f"rollout.prompts_per_batch ({rc.prompts_per_batch})"
            )
        if tc.prompts_per_step * rc.samples_per_prompt < lc.num_workers * lc.num_minibatches:
            raise ValueError(
                "train.prompts_per_step * rollout.samples_per_prompt must be >= "
                "learner.num_workers * learner.num_minibatches (every process needs samples)"
            )
        in_flight = (1 + tc.max_policy_lag) * (tc.prompts_per_step // rc.prompts_per_batch)
        if in_flight > tc.queue_size:
            raise ValueError(
                f"train.queue_size ({tc.queue_size}) must hold the {in_flight} prompt batches "
                "in flight ((1 + max_policy_lag) * prompts_per_step / prompts_per_batch)"
            )
        if self.placement == "colocated":
            _check_colocated(self)
        _check_eval(self)
        if self.model.lora.r and rc.weight_sync != "object_store":
            raise ValueError(
                f"model.lora: the engines load merged weights or adapters through the object store; "
                f"rollout.weight_sync={rc.weight_sync} streams the raw parameters (use object_store)"
            )
        if lc.backend == "nccl" and lc.resources.num_gpus == 0:
            raise ValueError("learner.backend=nccl needs learner.resources.num_gpus > 0")
        # `37+48=` plus EOS; guess_number keeps the bound of the old schema's default digits (2).
        # A dataset task's prompts are measured when they are tokenized (too long: dropped, counted).
        prompt_len = 2 * (self.task.digits if self.task.name == "addition" else 2) + 2
        too_long = rc.max_new_tokens + prompt_len > self.model.build.max_position_embeddings
        if self.model.path is None and self.task.name != "dataset" and too_long:
            raise ValueError("rollout.max_new_tokens plus the prompt exceeds model.build.max_position_embeddings")
        return self


def _check_eval(cfg: Config) -> None:
    """Text metrics need text with references: a dataset task's rows (or a perplexity file)."""
    if cfg.task.name == "dataset" or not cfg.eval.metrics:
        return
    if cfg.eval.needs_references:
        wanted = [m for m in cfg.eval.metrics if m != "perplexity" or cfg.eval.perplexity_file is None]
        raise ValueError(
            f"eval.metrics {wanted} compare with references, which only a dataset task's rows have "
            f"(task.name=dataset with task.reference_key; task.name is {cfg.task.name!r})"
            + ("; perplexity alone works on any task with eval.perplexity_file" if "perplexity" in wanted else "")
        )


def _check_colocated(cfg: Config) -> None:
    """The combinations `placement: colocated` cannot run, each with the one-line fix."""
    lag, engines, ranks = cfg.train.max_policy_lag, cfg.rollout.num_workers, cfg.learner.num_workers
    if lag:
        raise ValueError(
            f"placement: colocated takes turns (generate, then train) and needs train.max_policy_lag=0, got {lag}"
        )
    if engines != ranks:
        raise ValueError(
            f"placement: colocated runs one engine in each learner process: rollout.num_workers ({engines}) "
            f"must equal learner.num_workers ({ranks})"
        )
    if cfg.serve.enabled:
        raise ValueError(
            "placement: colocated hands weights over in-process, so serve.enabled (which follows "
            "the object store) needs placement: split"
        )
    if cfg.rollout.weight_sync != "object_store":
        raise ValueError(
            f"placement: colocated hands weights over in-process; rollout.weight_sync={cfg.rollout.weight_sync} "
            "is for placement: split"
        )


class PreferenceRunConfig(RunHeader):
    """Top-level config of `rl-service train-rm` / `train-dpo` (configs/rm.yaml, configs/dpo.yaml)."""

    name: str = "rm"
    """Run name: the model and metrics go to `<run_root>/<name>/`."""
    seed: int = 0
    """Seed for init, data order and synthetic wrong answers."""
    task: AdditionConfig = AdditionConfig()
    """The addition task (synthetic preference data, held-out split)."""
    model: ModelConfig = ModelConfig()
    """The policy the reward model / DPO starts from (same cache as `train`)."""
    preference: PreferenceConfig = RMTrainConfig()
    """The preference training loop (variant by `preference.type`: rm | dpo)."""

    @model_validator(mode="before")
    @classmethod
    def _preference_type(cls, data: Any) -> Any:
        """`preference:` without a type is a reward model (the loader sets the command's kind first)."""
        if isinstance(data, dict) and isinstance(data.get("preference"), dict) and "type" not in data["preference"]:
            data = {**data, "preference": {"type": "rm", **data["preference"]}}
        return data
