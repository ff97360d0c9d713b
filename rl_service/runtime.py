"""Thin Ray wiring used by the controller: start/stop the actors and queues, and the few
calls that fan out to all replicas (train step, weight sync, evaluation)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray

from rl_service import placement
from rl_service.config import Config
from rl_service.queues import RayBatchQueue
from rl_service.types import BatchSummary

log = logging.getLogger(__name__)


def _requested_cpus(cfg: Config) -> float:
    return (cfg.rollout.num_workers * cfg.rollout.resources.num_cpus
            + cfg.reward.num_scorers * cfg.reward.resources.num_cpus
            + cfg.learner.num_workers * cfg.learner.resources.num_cpus)


@contextmanager
def ray_session(cfg: Config):
    """Attach to `ray.address` / $RAY_ADDRESS, or start an embedded Ray bound to 127.0.0.1
    in its own temp dir (never the machine's default session), and stop it afterwards."""
    if ray.is_initialized():
        yield
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    tmp = None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # Short path: Ray's unix sockets live under it and must stay < 108 chars.
        tmp = tempfile.mkdtemp(prefix="rls-ray-", dir="/tmp")
        # Bind every Ray listener to loopback (not just advertise 127.0.0.1); embedded only.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(_requested_cpus(cfg)))
        ray.init(num_cpus=num_cpus, _temp_dir=tmp, _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=os.environ.get("RL_SERVICE_ACTOR_LOGS") == "1")
    try:
        yield
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Components:
    cfg: Config
    workers: list
    scorers: list
    learners: list
    pg: object
    prompt_q: RayBatchQueue
    rollout_q: RayBatchQueue
    scored_q: RayBatchQueue
    loops: list = field(default_factory=list)

    @staticmethod
    def start(cfg: Config, model_path: str) -> "Components":
        """Create every actor; engines and learners initialise in parallel."""
        qs = cfg.train.queue_size
        learners, pg = placement.make_learners(cfg, model_path)
        setup = [l.setup.remote() for l in learners]
        workers = placement.make_rollout_workers(cfg, model_path)
        scorers = placement.make_scorers(cfg)
        ray.get(setup + [w.__ray_ready__.remote() for w in workers + scorers])
        return Components(cfg, workers, scorers, learners, pg,
                          RayBatchQueue(qs, "prompt-queue"), RayBatchQueue(qs, "rollout-queue"),
                          RayBatchQueue(qs, "scored-queue"))

    def start_loops(self) -> None:
        self.loops = [w.run.remote(self.prompt_q, self.rollout_q) for w in self.workers]
        self.loops += [s.run.remote(self.rollout_q, self.scored_q) for s in self.scorers]

    def next_scored(self, deadline: float) -> tuple[object, BatchSummary]:
        """Next (ScoredBatch ref, summary); surfaces a crashed worker/scorer loop's error."""
        while True:
            item = self.scored_q.get_ref(timeout=0.5)
            if item is not None:
                return item
            done, _ = ray.wait(self.loops, num_returns=1, timeout=0)
            if done:
                ray.get(done[0])  # raises the loop's exception
                raise RuntimeError("a rollout/reward loop exited unexpectedly")
            if time.perf_counter() > deadline:
                raise TimeoutError("no scored batch within train.timeout_s; "
                                   f"queue depths: prompts={self.prompt_q.qsize()} rollouts={self.rollout_q.qsize()}")

    def train_step(self, refs: list, group_size: int) -> dict:
        # Every learner rank gets the same list of refs; Ray resolves them in each process.
        results = ray.get([l.train_step.remote(refs, group_size) for l in self.learners])
        return dict(results[0])

    def sync_weights(self, version: int, probes: list[list[int]]) -> dict:
        """Publish `version` from the learners and load it, verified, into every worker."""
        calls = [l.publish.options(num_returns=2).remote(version, probes) for l in self.learners]
        meta_ref, state_ref = calls[0]
        ray.get([c[0] for c in calls])
        results = ray.get([w.load_weights.remote(state_ref, meta_ref) for w in self.workers])
        return {"probe_max_diff": max(r["probe_max_diff"] for r in results),
                "state_ref": state_ref, "meta_ref": meta_ref}

    def save_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank writes its shards (+ small per-rank state) into `ckpt_dir`."""
        return ray.get([l.save_checkpoint.remote(str(ckpt_dir)) for l in self.learners])[0]

    def load_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank restores from `ckpt_dir` (DCP reshards to this world size)."""
        return ray.get([l.load_checkpoint.remote(str(ckpt_dir)) for l in self.learners])[0]

    def stop_loops(self) -> None:
        ray.get([a.stop.remote() for a in self.workers + self.scorers])
        ray.get(self.loops, timeout=60)
        self.loops = []

    def save_final(self, out_dir) -> None:
        ray.get([l.save_hf.remote(str(out_dir)) for l in self.learners])

    def shutdown(self) -> None:
        for l in self.learners:
            try:
                ray.get(l.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for a in self.workers + self.scorers + self.learners:
            ray.kill(a)
        for q in (self.prompt_q, self.rollout_q, self.scored_q):
            q.shutdown()
        placement.release(self.pg)


def evaluate(workers: list, task, max_new_tokens: int) -> float:
    """Greedy exact match on the fixed held-out set, split across the rollout workers."""
    problems = task.eval_problems
    chunks = [problems[i::len(workers)] for i in range(len(workers))]
    texts = ray.get([w.evaluate.remote([p.prompt for p in c], max_new_tokens) for w, c in zip(workers, chunks)])
    correct = sum(task.verify(t, p.answer) for c, ts in zip(chunks, texts) for p, t in zip(c, ts))
    return correct / len(problems)


def probe_sequences(model_path: str, task, count: int = 4) -> list[list[int]]:
    """Fixed token sequences (held-out prompt + answer + EOS) for verifying weight syncs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    return [tok(p.prompt + p.answer).input_ids + [tok.eos_token_id] for p in task.eval_problems[:count]]
