"""`rollout.engine` / `serve.engine`: the generation engine, one section for training and serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rl_service.config.base import Section

# Before the engine had its own section these were flat fields of `rollout:` and `serve:`.
LEGACY_ENGINE_FIELDS = {"dtype": "dtype", "kv_cache_gib": "kv_cache_gib"}


class EngineConfig(Section):
    """The engine behind the Engine protocol (rl_service/rollout/engine.py)."""

    name: Literal["vllm", "hf"] = "vllm"
    """vLLM `LLM` in-process, or HF generate."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Engine dtype; float32 keeps rollout (and served) logprobs equal to the learner's on CPU."""
    kv_cache_gib: float = Field(0.25, gt=0)
    """vLLM CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE)."""
    lora_rank: int = Field(0, ge=0)
    """Largest LoRA adapter rank the engine reserves room for (vLLM `enable_lora`); 0 = no LoRA.
    Set by the run itself when model.lora.sync resolves to adapters (rollout/adapters.py), not by
    hand."""
