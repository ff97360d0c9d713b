"""RolloutWorker actor body: pull PromptBatches, generate n samples per prompt, tag, push.

Each sample is tagged with its `sample_id` and the `policy_version` of the weights that
generated it. A lock serialises generation and weight loads, so one RolloutBatch is
always produced by exactly one version. Weight loads are verified: the received tensors
must hash to the published checksum and the engine's logprobs on the probe sequences
must equal the learner's.

Two ways a version arrives (rollout.weight_sync): `load_weights` (the whole state dict through
the object store) or streamed (`receive_weights` fills this worker's buffers from the
weight-sync group while generation goes on, no lock taken; `commit_weights` then verifies and
swaps them in under the lock, between two generate calls; rollout/weight_stream.py).
"""

from __future__ import annotations

import math
import threading
import time

from rl_service.config import RolloutConfig
from rl_service.envs import is_env_prompt, run_episodes
from rl_service.models.hf_config import context_length
from rl_service.rollout.engine import make_engine
from rl_service.rollout.weight_stream import GroupSpec, Inbox, TensorSlot
from rl_service.rollout.weight_sync import load_verified
from rl_service.types import PolicyVersion, PromptBatch, RolloutBatch, Sample


class RolloutWorker:
    def __init__(self, cfg: RolloutConfig, model_path: str, seed: int = 0, name: str = "rollout-0", rank: int = 1):
        """rank: this worker's rank in the weight-sync group (1 + its index; 0 is learner rank 0)."""
        self.cfg = cfg
        self.name = name
        self.seed = seed
        # as many OpenMP threads as whole CPUs the worker reserved (at least 1)
        threads = max(1, math.floor(cfg.resources.num_cpus))
        self.engine = make_engine(cfg.engine, model_path, seed, threads=threads, gpu=cfg.resources.num_gpus > 0)
        # Token budget of one multi-turn episode: the model's context length.
        self.max_tokens = context_length(model_path)
        self._lock = threading.Lock()
        self._inbox = Inbox(rank)
        self._stop = False
        self._calls = 0

    @property
    def version(self) -> int:
        return self.engine.version

    def generate(self, batch: PromptBatch) -> RolloutBatch:
        cfg = self.cfg
        with self._lock:
            start = time.perf_counter()
            version = self.engine.version
            self._calls += 1
            if any(is_env_prompt(p.metadata) for p in batch.prompts):
                samples = self._episode_samples(batch, version)
                return RolloutBatch(
                    batch_id=batch.batch_id,
                    samples=samples,
                    worker=self.name,
                    policy_version=version,
                    generate_s=time.perf_counter() - start,
                )
            outs = self._generate(
                batch.prompts,
                n=cfg.samples_per_prompt,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=self.seed * 1_000_003 + batch.batch_id,
            )
            elapsed = time.perf_counter() - start
        samples = tuple(
            Sample(
                sample_id=f"{p.prompt_id}/{k}",
                prompt_id=p.prompt_id,
                prompt_text=p.text,
                prompt_ids=c.prompt_ids,
                response_ids=c.token_ids,
                response_logprobs=c.logprobs,
                response_text=c.text,
                policy_version=version,
                finish_reason=c.finish_reason,
                metadata=dict(p.metadata),
            )
            for p, group in zip(batch.prompts, outs)
            for k, c in enumerate(group)
        )
        return RolloutBatch(
            batch_id=batch.batch_id, samples=samples, worker=self.name, policy_version=version, generate_s=elapsed
        )

    def _generate(self, prompts, **sampling):
        """Completions from the prompts' token ids when the task gave them (a dataset task's chat
        template ids, used as is), else from their text (the engine tokenizes it, BOS added)."""
        with_ids = [p.token_ids is not None for p in prompts]
        if all(with_ids):
            return self.engine.generate_ids([list(p.token_ids) for p in prompts], **sampling)
        if any(with_ids):
            raise ValueError("a prompt batch mixes token-id and text prompts")
        return self.engine.generate([p.text for p in prompts], **sampling)

    def _episode_samples(self, batch: PromptBatch, version: int) -> tuple[Sample, ...]:
        """One Sample per environment episode, n episodes per prompt (caller holds the lock)."""
        cfg = self.cfg
        if not all(is_env_prompt(p.metadata) for p in batch.prompts):
            raise ValueError(f"batch {batch.batch_id} mixes environment and plain prompts")
        groups = run_episodes(
            self.engine,
            self.engine.tokenizer,
            [p.metadata for p in batch.prompts],
            n=cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            max_tokens=self.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=self.seed * 1_000_003 + batch.batch_id,
        )
        samples = []
        for p, group in zip(batch.prompts, groups):
            for k, ep in enumerate(group):
                if ep.prompt_text != p.text:
                    raise ValueError(f"prompt {p.prompt_id}: env reset gave {ep.prompt_text!r}, prompt is {p.text!r}")
                samples.append(
                    Sample(
                        sample_id=f"{p.prompt_id}/{k}",
                        prompt_id=p.prompt_id,
                        prompt_text=p.text,
                        prompt_ids=tuple(ep.prompt_ids),
                        response_ids=tuple(ep.response_ids),
                        response_logprobs=tuple(ep.response_logprobs),
                        response_text=self.engine.tokenizer.decode(ep.response_ids, skip_special_tokens=True),
                        policy_version=version,
                        finish_reason=ep.finish_reason,
                        metadata={**p.metadata, **ep.summary()},
                        response_mask=tuple(ep.response_mask),
                    )
                )
        return tuple(samples)

    def run(self, prompt_q, rollout_q, poll_s: float = 0.2) -> int:
        """Loop until `stop()`: pull a PromptBatch, generate, push the RolloutBatch (blocks when
        the rollout queue is full: backpressure). Returns the number of batches produced."""
        from rl_service.testing import faults

        done = 0
        while not self._stop:
            batch = prompt_q.get(timeout=poll_s)
            if batch is None:
                continue
            with faults.during("kill_rollout", batch.batch_id):  # test hook: die inside generate
                out = self.generate(batch)
            rollout_q.put(out)
            done += 1
        return done

    def stop(self) -> None:
        self._stop = True

    def load_weights(self, state_dict, meta: PolicyVersion) -> dict:
        """Load a published version in place and verify it (checksum, then probe logprobs within
        rollout.verify_tolerance); raises WeightSyncError on mismatch. Generation waits meanwhile."""
        return load_verified(self.engine, state_dict, meta, self.cfg.verify_tolerance, self.name, lock=self._lock)

    def receive_weights(self, spec: GroupSpec, layout: tuple[TensorSlot, ...], stream_id: int) -> dict:
        """Receive stream `stream_id` from the weight-sync group into this worker's buffers. Takes
        no lock: generation continues meanwhile. -> {"receive_s"}"""
        return self._inbox.receive(spec, layout, stream_id)

    def commit_weights(self, meta: PolicyVersion, stream_id: int) -> dict:
        """Once stream `stream_id` is in: verify (checksum of the received bytes), load under the
        generation lock, probe check; as `load_weights`, WeightSyncError on a mismatch."""
        state = self._inbox.take(stream_id, self.cfg.weight_sync_timeout_s)
        return load_verified(self.engine, state, meta, self.cfg.verify_tolerance, self.name, lock=self._lock)

    def evaluate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy completions (one per prompt) for held-out accuracy."""
        with self._lock:
            outs = self.engine.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
        return [group[0].text for group in outs]

    def evaluate_ids(
        self, prompt_ids: list[list[int]], max_new_tokens: int, n: int = 1, temperature: float = 0.0, **sampling
    ) -> list[list[str]]:
        """Completion texts from token-id prompts: greedy (n copies) or n samples per prompt."""
        with self._lock:
            outs = self.engine.generate_ids(
                prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=temperature, **sampling
            )
        return [[c.text for c in group] for group in outs]

    def evaluate_episodes(self, metadatas: list[dict], max_new_tokens: int) -> list[dict]:
        """Greedy episodes (one per env prompt) -> each episode's summary (`env_success`, `env_return`...)."""
        with self._lock:
            groups = run_episodes(
                self.engine,
                self.engine.tokenizer,
                metadatas,
                n=1,
                max_new_tokens=max_new_tokens,
                max_tokens=self.max_tokens,
                temperature=0.0,
            )
        return [g[0].summary() for g in groups]

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        with self._lock:
            return self.engine.score(sequences)
