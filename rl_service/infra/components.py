"""Thin Ray wiring used by the controller: start/stop the actors and queues, the few calls
that fan out to all replicas (train step, weight sync, evaluation), and crash recovery:

    rollout worker / reward scorer / queue died  -> ComponentFailure -> Components.recover()
        (replace the dead, rebuild the queues, reload the newest weights; the controller re-puts
         every batch not yet trained)
    learner process died                         -> LearnerFailure -> controller restarts the
        whole run from the last checkpoint"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray

from rl_service.config import Config
from rl_service.infra import placement
from rl_service.infra.queues import RayBatchQueue
from rl_service.types import BatchSummary

log = logging.getLogger(__name__)


def _requested_cpus(cfg: Config) -> float:
    return (
        cfg.rollout.num_workers * cfg.rollout.resources.num_cpus
        + cfg.reward.num_scorers * cfg.reward.resources.num_cpus
        + cfg.learner.num_workers * cfg.learner.resources.num_cpus
    )


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
        ray.init(
            num_cpus=num_cpus,
            _temp_dir=tmp,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=os.environ.get("RL_SERVICE_ACTOR_LOGS") == "1",
        )
    try:
        yield
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


class ComponentFailure(RuntimeError):
    """A rollout worker, reward scorer or queue died; `Components.recover` replaces it."""


class LearnerFailure(RuntimeError):
    """A learner process died: the group is restarted from the last checkpoint (controller.train)."""


# A process died, or an object whose owner died was read: a crash, not a bug in the code.
_CRASHED = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
_QUEUES = ("prompt-queue", "rollout-queue", "scored-queue")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _new_queue(maxsize: int, name: str, wait_s: float = 30.0) -> RayBatchQueue:
    deadline = time.monotonic() + wait_s
    while True:  # a replacement's name may still be held by the queue actor that just died
        try:
            return RayBatchQueue(maxsize, name)
        except ValueError as err:
            if "already taken" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class Components:
    cfg: Config
    model_path: str
    workers: list
    scorers: list
    learners: list
    pg: object
    prompt_q: RayBatchQueue | None = None
    rollout_q: RayBatchQueue | None = None
    scored_q: RayBatchQueue | None = None
    loops: list = field(default_factory=list)
    """One `run` call per worker, then per scorer (same order as `workers + scorers`)."""
    published: tuple | None = None
    """(state_ref, meta_ref) of the newest version sent to the workers: a replacement loads it."""
    restarts: Counter = field(default_factory=Counter)
    """Replacements per actor/queue name (`rollout-0`, `reward-0`, `prompt-queue`...)."""
    suspects: dict = field(default_factory=dict)
    """name -> batch ids in flight at every one of its deaths (named when restarts run out)."""

    @staticmethod
    def start(cfg: Config, model_path: str) -> Components:
        """Create every actor; engines and learners initialise in parallel."""
        learners, pg = placement.make_learners(cfg, model_path)
        setup = [learner.setup.remote() for learner in learners]
        workers = placement.make_rollout_workers(cfg, model_path)
        scorers = placement.make_scorers(cfg)
        ray.get(setup + [w.__ray_ready__.remote() for w in workers + scorers])
        comps = Components(cfg, model_path, workers, scorers, learners, pg)
        comps._new_queues()
        return comps

    def _new_queues(self) -> None:
        qs = self.cfg.train.queue_size
        self.prompt_q, self.rollout_q, self.scored_q = (_new_queue(qs, name) for name in _QUEUES)

    def start_loops(self) -> None:
        self.loops = [w.run.remote(self.prompt_q, self.rollout_q) for w in self.workers]
        self.loops += [s.run.remote(self.rollout_q, self.scored_q) for s in self.scorers]

    def actor_names(self) -> list[str]:
        """Names of `workers + scorers`, in that order (placement.py names them so)."""
        return [f"rollout-{i}" for i in range(len(self.workers))] + [f"reward-{i}" for i in range(len(self.scorers))]

    def put_prompts(self, batch) -> None:
        try:
            self.prompt_q.put(batch)
        except ray.exceptions.RayActorError as err:
            raise ComponentFailure(f"prompt-queue died: {_first_line(err)}") from err

    def next_scored(self, deadline: float) -> tuple[object, BatchSummary]:
        """Next (ScoredBatch ref, summary). A crashed actor or queue raises ComponentFailure;
        any other error of a worker/scorer loop (e.g. a failing reward fn) is raised as is."""
        while True:
            try:
                item = self.scored_q.get_ref(timeout=0.5)
            except ray.exceptions.RayActorError as err:
                raise ComponentFailure(f"scored-queue died: {_first_line(err)}") from err
            if item is not None:
                return item
            done, _ = ray.wait(self.loops, num_returns=1, timeout=0)
            if done:
                name = self.actor_names()[self.loops.index(done[0])]
                try:
                    ray.get(done[0])  # raises the loop's exception
                except _CRASHED as err:
                    raise ComponentFailure(f"{name} stopped: {_first_line(err)}") from err
                raise RuntimeError("a rollout/reward loop exited unexpectedly")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no scored batch within train.timeout_s; queue depths: {self.queue_depths()}")

    def queue_depths(self) -> dict[str, int]:
        """`queue/<x>_depth` metrics; -1 for a queue that died (recovered at the next collect)."""
        out = {}
        for key, q in (("prompts", self.prompt_q), ("rollouts", self.rollout_q), ("scored", self.scored_q)):
            try:
                out[f"queue/{key}_depth"] = q.qsize()
            except ray.exceptions.RayActorError:
                out[f"queue/{key}_depth"] = -1
        return out

    def recover(self, in_flight: list[int]) -> dict[str, int]:
        """Replace every dead rollout worker and scorer, rebuild all three queues, restart the loops.

        All queues are rebuilt (not only a dead one): items in them may be refs owned by a dead
        actor, and loops of live actors blocked on an old queue only stop when it is killed. The
        caller re-puts every batch it issued and has not trained. A replacement worker reruns its
        constructor (the base model) and so loads the newest published weights before its loop starts.
        in_flight: batch ids issued and not collected, named in the error when restarts run out.
        Returns how many of each kind were replaced: {"rollout": n, "reward": n, "queue": n}."""
        actors, names = self.workers + self.scorers, self.actor_names()
        pings = [a.__ray_ready__.remote() for a in actors]
        ray.wait(pings, num_returns=len(pings), timeout=10)
        dead = [i for i, p in enumerate(pings) if not _answers(p)]
        dead_queues = [q.name for q in (self.prompt_q, self.rollout_q, self.scored_q) if not q.alive()]
        for name in [names[i] for i in dead] + dead_queues:
            self.restarts[name] += 1
            self.suspects[name] = self.suspects.get(name, set(in_flight)) & set(in_flight)
            if self.restarts[name] > self.cfg.train.max_restarts:
                raise RuntimeError(
                    f"{name} died {self.restarts[name]} times, more than train.max_restarts="
                    f"{self.cfg.train.max_restarts}; batches in flight at every one of its deaths: "
                    f"{sorted(self.suspects[name])} (at the last one: {in_flight})"
                )
        for q in (self.prompt_q, self.rollout_q, self.scored_q):
            q.shutdown()
        was_running, old_loops, self.loops = bool(self.loops), self.loops, []
        if old_loops:
            ray.wait(old_loops, num_returns=len(old_loops), timeout=60)  # they fail on the dead queues
        for i in dead:
            ray.kill(actors[i], no_restart=True)
            if i < len(self.workers):
                self.workers[i] = placement.make_rollout_worker(self.cfg, self.model_path, i)
            else:
                self.scorers[i - len(self.workers)] = placement.make_scorer(self.cfg, i - len(self.workers))
        self._new_queues()
        new_workers = [self.workers[i] for i in dead if i < len(self.workers)]
        ray.get([a.__ray_ready__.remote() for a in self.workers + self.scorers])
        if new_workers and self.published is not None:
            ray.get([w.load_weights.remote(*self.published) for w in new_workers])
        if was_running:
            self.start_loops()
        n_rollout = sum(i < len(self.workers) for i in dead)
        return {"rollout": n_rollout, "reward": len(dead) - n_rollout, "queue": len(dead_queues)}

    def _learner_get(self, refs: list, what: str) -> list:
        """ray.get that fails as soon as one rank fails (its peers may wait forever in a collective);
        a dead learner process raises LearnerFailure."""
        waiting = list(refs)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                ray.get(done)
            return ray.get(refs)
        except Exception as err:
            pings = [learner.__ray_ready__.remote() for learner in self.learners]
            ray.wait(pings, num_returns=len(pings), timeout=5)
            dead = [rank for rank, p in enumerate(pings) if _died(p)]
            if isinstance(err, _CRASHED) or dead:
                raise LearnerFailure(f"learner {what} failed (dead ranks: {dead}): {_first_line(err)}") from err
            raise

    def train_step(self, refs: list, group_size: int) -> dict:
        # Every learner rank gets the same list of refs; Ray resolves them in each process.
        results = self._learner_get(
            [learner.train_step.remote(refs, group_size) for learner in self.learners], "train_step"
        )
        return dict(results[0])

    def publish(self, version: int, probes: list[list[int]]) -> dict:
        """Publish `version` from the learners (state dict in the object store, owned by this driver)."""
        calls = [learner.publish.options(num_returns=2).remote(version, probes) for learner in self.learners]
        self._learner_get([c[0] for c in calls], "publish")
        meta_ref, state_ref = calls[0]
        self.published = (state_ref, meta_ref)
        return {"state_ref": state_ref, "meta_ref": meta_ref}

    def load_published(self) -> dict:
        """Load the newest published version, verified, into every worker."""
        try:
            results = ray.get([w.load_weights.remote(*self.published) for w in self.workers])
        except ray.exceptions.RayActorError as err:
            raise ComponentFailure(f"a rollout worker died loading weights: {_first_line(err)}") from err
        return {
            "probe_max_diff": max(r["probe_max_diff"] for r in results),
            "load_s": max(r["seconds"] for r in results),
        }  # slowest worker: checksum + load + probe

    def sync_weights(self, version: int, probes: list[list[int]]) -> dict:
        """Publish `version` from the learners and load it, verified, into every worker."""
        return {**self.publish(version, probes), **self.load_published()}

    def save_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank writes its shards (+ small per-rank state) into `ckpt_dir`."""
        return self._learner_get(
            [learner.save_checkpoint.remote(str(ckpt_dir)) for learner in self.learners], "checkpoint"
        )[0]

    def load_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank restores from `ckpt_dir` (DCP reshards to this world size)."""
        return self._learner_get([learner.load_checkpoint.remote(str(ckpt_dir)) for learner in self.learners], "load")[
            0
        ]

    def kill_learner_soon(self, delay_s: float) -> None:
        """Fault injection: kill the last learner process `delay_s` from now (mid-step)."""
        victim = self.learners[-1]
        threading.Thread(target=lambda: (time.sleep(delay_s), ray.kill(victim, no_restart=True)), daemon=True).start()

    def stop_loops(self) -> None:
        ray.get([a.stop.remote() for a in self.workers + self.scorers])
        ray.get(self.loops, timeout=60)
        self.loops = []

    def save_final(self, out_dir) -> None:
        self._learner_get([learner.save_hf.remote(str(out_dir)) for learner in self.learners], "save_hf")

    def shutdown(self, graceful: bool = True) -> None:
        """graceful=False after a learner failure: ranks stuck in a collective never answer."""
        for learner in self.learners if graceful else []:
            try:
                ray.get(learner.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for a in self.workers + self.scorers + self.learners:
            ray.kill(a)
        for q in (self.prompt_q, self.rollout_q, self.scored_q):
            if q is not None:
                q.shutdown()
        placement.release(self.pg)


def _answers(ref) -> bool:
    """A ping that came back without error."""
    try:
        ray.get(ref, timeout=0)
        return True
    except Exception:  # noqa: BLE001 - dead, dying or not answering: replace it
        return False


def _died(ref) -> bool:
    """A ping that failed because the actor is dead (not one that is merely busy)."""
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayActorError:
        return True
    except Exception:  # noqa: BLE001 - busy (e.g. waiting in a collective) is not dead
        pass
    return False


def evaluate(workers: list, task, max_new_tokens: int) -> float:
    """Greedy exact match on the fixed held-out set, split across the rollout workers.
    Environment tasks: the share of held-out episodes the greedy policy solves."""
    if getattr(task, "is_env", False):
        metas = [p.metadata for p in task.eval_prompts]
        chunks = [metas[i :: len(workers)] for i in range(len(workers))]
        results = ray.get([w.evaluate_episodes.remote(c, max_new_tokens) for w, c in zip(workers, chunks)])
        return sum(r["env_success"] for rs in results for r in rs) / len(metas)
    problems = task.eval_problems
    chunks = [problems[i :: len(workers)] for i in range(len(workers))]
    texts = ray.get([w.evaluate.remote([p.prompt for p in c], max_new_tokens) for w, c in zip(workers, chunks)])
    correct = sum(task.verify(t, p.answer) for c, ts in zip(chunks, texts) for p, t in zip(c, ts))
    return correct / len(problems)


def probe_sequences(model_path: str, task, count: int = 4) -> list[list[int]]:
    """Fixed token sequences (held-out prompt + answer + EOS) for verifying weight syncs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if getattr(task, "is_env", False):  # multi-turn transcripts: env tokens inside the sequence
        return task.probe_sequences(tok, count)
    return [tok(p.prompt + p.answer).input_ids + [tok.eos_token_id] for p in task.eval_problems[:count]]
