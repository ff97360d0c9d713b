"""`rollout:` the rollout workers and their engines."""

from __future__ import annotations

from typing import Any

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

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return fold_legacy(data, "engine", "name", LEGACY_ENGINE_FIELDS)
