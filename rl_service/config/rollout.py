"""`rollout:` the rollout workers and their engines."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rl_service.config.base import Resources, Section, fold_legacy
from rl_service.config.engine import LEGACY_ENGINE_FIELDS, EngineConfig


class RolloutConfig(Section):
    engine: EngineConfig = EngineConfig()
    """Generation engine (also accepted in the old flat form: `engine: vllm` beside `dtype`,
    `kv_cache_gib`)."""
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
    prompts_per_batch: int = Field(16, ge=1)
    """Prompts per PromptBatch put on the prompt queue (the unit of work of a worker)."""
    verify_tolerance: float = Field(1e-4, gt=0)
    """Max |logprob diff| between engine and learner on the probe after a weight sync."""
    weight_sync: Literal["object_store", "collective"] = "object_store"
    """How a new policy version reaches the workers. `object_store`: learner rank 0 gathers the
    full state dict, the driver owns it in the Ray object store, each worker fetches and loads it
    (the driver waits for every load). `collective`: learner rank 0 streams it tensor by tensor
    over a process group of its own with the workers (gloo; NCCL with the learner on CUDA), the
    learner's ranks gathering one tensor at a time; workers receive while they generate, and
    verify + swap under their generation lock between two batches. With train.max_policy_lag
    >= 1 the driver does not wait for the swap: it is settled before the next train step (a
    metrics row then reports the previous version's load). Checksum and probe check as before;
    a Serve follower still gets the object-store copy (rollout/weight_stream.py)."""
    weight_sync_timeout_s: float = Field(120.0, gt=0)
    """weight_sync=collective: how long joining the group, one broadcast, or a worker waiting
    for its stream may take before the sync fails (the group is then formed again and the
    version re-sent)."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return fold_legacy(data, "engine", "name", LEGACY_ENGINE_FIELDS)
