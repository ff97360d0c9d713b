"""Generation engines behind one protocol: vLLM (`VLLMEngine`) or transformers (`HFEngine`).

Logprob convention (both engines, everywhere in the project): a reported logprob is
log_softmax of the model's RAW logits, i.e. the temperature-1, unfiltered distribution,
whatever temperature/top_p was used to sample. That is what the learner recomputes from
the same weights, so rollout and learner logprobs agree to float error (fp32: < 1e-4).
vLLM gives exactly this with `logprobs_mode="raw_logprobs"` (its default, set explicitly);
HF gives it from `output_logits=True` (unprocessed scores), never `output_scores`.

Importing this module imports neither vllm nor transformers: the engine classes load
lazily (`from rl_service.rollout.engine import VLLMEngine` works and pulls in vllm only then).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from rl_service.config import EngineConfig


@dataclass(frozen=True)
class Completion:
    prompt_ids: tuple[int, ...]
    """The prompt as the engine tokenized it (BOS included)."""
    token_ids: tuple[int, ...]
    """Generated ids as generated (EOS included when produced)."""
    logprobs: tuple[float, ...]
    """Raw (temperature-1, unfiltered) logprob of each generated token; len == len(token_ids)."""
    text: str
    """Decoded completion, special tokens skipped."""
    finish_reason: str
    """`stop` (EOS produced) or `length` (hit max_new_tokens)."""


@dataclass(frozen=True)
class TokenDelta:
    """What one engine step added to one choice of a `stream` call."""

    index: int
    """Choice index in `generate`'s flattened order: prompt i, sample j -> i * n + j."""
    token_ids: tuple[int, ...]
    """Ids produced since this choice's previous delta (EOS included when produced)."""
    logprobs: tuple[float, ...]
    """Raw logprob of each of `token_ids` (same convention as `Completion.logprobs`)."""
    finish_reason: str | None = None
    """Set on the choice's last delta: `stop` or `length`."""


class Engine(Protocol):
    version: int
    """Policy version of the weights currently loaded (0 = the weights it started from)."""

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """`n` completions per prompt, grouped by prompt. temperature 0 = greedy (n identical
        copies). With `seed` set, the same call returns the same completions."""
        ...

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """`generate` from token-id prompts used as given (no BOS added, nothing re-tokenised):
        the multi-turn path, where a turn's input is the previous ids + generated ids + observation ids."""
        ...

    def stream(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[TokenDelta]:
        """`generate`, yielding each choice's new tokens as the engine produces them. Greedy
        gives the same tokens as `generate`. Closing the iterator early aborts the requests.
        A prompt is a text (tokenized as `generate` does) or token ids (used as given, as
        `generate_ids` does)."""
        ...

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Raw logprob of token t given tokens < t, t = 1..len-1: len-1 floats per sequence."""
        ...

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Copy HF-named weights in place, drop every cache derived from the old ones, set version."""
        ...


def make_engine(cfg: EngineConfig, model_path: str, seed: int, threads: int = 1, gpu: bool = False) -> Engine:
    """The engine named by `cfg.name` (rollout.engine or serve.engine). `threads`: OpenMP
    threads of a vLLM engine on CPU (callers pass the whole CPUs they reserved, so engines
    sharing a machine with learners do not oversubscribe it); `gpu`: put an HF engine on CUDA."""
    model_path = str(model_path)
    if cfg.name == "vllm":
        from rl_service.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            dtype=cfg.dtype,
            kv_cache_gib=cfg.kv_cache_gib,
            seed=seed,
            cpu_threads=threads,
            lora_rank=cfg.lora_rank,
        )
    if cfg.name == "hf":
        if cfg.lora_rank:
            raise ValueError("engine hf cannot serve LoRA adapters (model.lora.sync=merged)")
        from rl_service.rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype=cfg.dtype, seed=seed, device="cuda" if gpu else None)
    raise ValueError(f"unknown engine {cfg.name!r}")


def cut_at_eos(token_ids: list[int], eos_id: int | None) -> tuple[list[int], str]:
    """Generated ids up to and including the first EOS -> (ids, finish_reason)."""
    if eos_id is not None and eos_id in token_ids:
        return token_ids[: token_ids.index(eos_id) + 1], "stop"
    return token_ids, "length"


def __getattr__(name: str) -> Any:
    # Lazy re-exports so `import rl_service.rollout.engine` stays free of vllm/transformers.
    if name == "VLLMEngine":
        from rl_service.rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "HFEngine":
        from rl_service.rollout.hf_engine import HFEngine

        return HFEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
