"""The running components and the thin Ray fan-out the controller calls on them.

    start / start_loops / stop_loops / shutdown      actors, queues and their run loops
    put_prompts, next_scored, queue_depths           the controller's end of the queues
    train_step, publish, load_published,             one call fanned out to every learner rank
      settle_weights, save_checkpoint,                 or rollout worker (weights: the object store,
      load_checkpoint, save_final                      or streamed, weight_streamer.py)
    learner_results(learners, refs, what)            ray.get of one call on every learner rank (also sft/loop.py)
    dead_actors, dead_queues, drop_queues,           the steps rl_service/controller/recovery.py
      replace_actor, new_queues, ready, catch_up       composes to replace what died

A crash surfaces as one of two errors: ComponentFailure (a rollout worker, reward scorer or queue
died: replaced in place) and LearnerFailure (a learner process died: the whole group restarts
from the last checkpoint). What to do about either is recovery.py's job, not this module's.

`placement: colocated`: `workers` and `learners` are the same K ColocatedRank actors
(rl_service/learner/colocated.py), so every call above reaches the same bodies; only publish /
load_published differ (the state dict stays in each process), and a colocated actor that dies
is a LearnerFailure, never replaced alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray

from rl_service.config import Config
from rl_service.infra import placement
from rl_service.infra.queues import RayBatchQueue
from rl_service.infra.weight_streamer import WeightStreamer
from rl_service.rollout.weight_stream import GroupSpec
from rl_service.types import BatchSummary, PromptBatch


class ComponentFailure(RuntimeError):
    """A rollout worker, reward scorer or queue died; controller/recovery.py replaces it."""


class LearnerFailure(RuntimeError):
    """A learner process died: the group is restarted from the last checkpoint (controller/recovery.py)."""


# A process died, or an object whose owner died was read: a crash, not a bug in the code.
_CRASHED = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


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
    streamer: WeightStreamer | None = None
    """rollout.weight_sync=collective: the weight-sync group's driver side (else None)."""

    @staticmethod
    def start(cfg: Config, model_path: str) -> Components:
        """Create every actor; engines and learners initialise in parallel."""
        if cfg.placement == "colocated":  # learner group first, then each rank's engine inside it
            ranks, pg = placement.make_colocated_ranks(cfg, model_path)
            scorers = placement.make_scorers(cfg)
            learner_results(ranks, [r.setup.remote() for r in ranks], "setup")
            ray.get([s.__ray_ready__.remote() for s in scorers])
            comps = Components(cfg, model_path, list(ranks), scorers, list(ranks), pg)
            comps.new_queues()
            return comps
        learners, pg = placement.make_learners(cfg, model_path)
        setup = [learner.setup.remote() for learner in learners]
        workers = placement.make_rollout_workers(cfg, model_path)
        scorers = placement.make_scorers(cfg)
        info = ray.get(setup + [w.__ray_ready__.remote() for w in workers + scorers])[0]
        comps = Components(cfg, model_path, workers, scorers, learners, pg)
        if cfg.rollout.weight_sync == "collective":
            comps.streamer = _streamer(cfg, learners, pg, nccl=info["device"].startswith("cuda"))
        comps.new_queues()
        return comps

    @property
    def colocated(self) -> bool:
        return self.cfg.placement == "colocated"

    # ------------------------------------------------------------------ loops and queues
    def start_loops(self) -> None:
        self.loops = [w.run.remote(self.prompt_q, self.rollout_q) for w in self.workers]
        self.loops += [s.run.remote(self.rollout_q, self.scored_q) for s in self.scorers]

    def stop_loops(self) -> None:
        ray.get([a.stop.remote() for a in self.workers + self.scorers])
        ray.get(self.loops, timeout=60)
        self.loops = []

    def actor_names(self) -> list[str]:
        """Names of `workers + scorers`, in that order (placement.py names them so)."""
        worker = "colocated" if self.colocated else "rollout"
        return [f"{worker}-{i}" for i in range(len(self.workers))] + [f"reward-{i}" for i in range(len(self.scorers))]

    def queues(self) -> tuple:
        return self.prompt_q, self.rollout_q, self.scored_q

    def put_prompts(self, batch: PromptBatch) -> None:
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
                    if self.colocated and self.loops.index(done[0]) < len(self.workers):
                        raise LearnerFailure(f"{name} (a learner rank) died: {_first_line(err)}") from err
                    raise ComponentFailure(f"{name} stopped: {_first_line(err)}") from err
                raise RuntimeError("a rollout/reward loop exited unexpectedly")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no scored batch within train.timeout_s; queue depths: {self.queue_depths()}")

    def queue_depths(self) -> dict[str, int]:
        """`queue/<x>_depth` metrics; -1 for a queue that died (recovered at the next collect)."""
        out = {}
        for key, q in zip(("prompts", "rollouts", "scored"), self.queues()):
            try:
                out[f"queue/{key}_depth"] = q.qsize()
            except ray.exceptions.RayActorError:
                out[f"queue/{key}_depth"] = -1
        return out

    # ------------------------------------------------------------------ replacing what died
    def dead_actors(self, timeout_s: float = 10, pings: int = 3, starting: set[int] = frozenset()) -> list[int]:
        """Indices into `workers + scorers` of the actors that are dead (unresponsive()).
        `starting`: replacements whose constructor may still run (dead only if Ray says so)."""
        return unresponsive(self.workers + self.scorers, timeout_s, pings, starting)

    def dead_queues(self) -> list[str]:
        return [q.name for q in self.queues() if not q.alive()]

    def drop_queues(self) -> bool:
        """Shut all three queues down and wait for the loops blocked on them to fail.
        Returns whether loops were running (to start them again on the new queues)."""
        for q in self.queues():
            q.shutdown()
        old_loops, self.loops = self.loops, []
        if old_loops:
            ray.wait(old_loops, num_returns=len(old_loops), timeout=60)
        return bool(old_loops)

    def replace_actor(self, index: int) -> None:
        """Kill `(workers + scorers)[index]` for good and create a new actor of its name.
        A colocated worker is a learner rank too: its death restarts the learner group instead."""
        if self.colocated and index < len(self.workers):
            raise LearnerFailure(f"colocated-{index} (a learner rank) died")
        ray.kill((self.workers + self.scorers)[index], no_restart=True)
        if index < len(self.workers):
            self.workers[index] = placement.make_rollout_worker(self.cfg, self.model_path, index)
        else:
            self.scorers[index - len(self.workers)] = placement.make_scorer(self.cfg, index - len(self.workers))

    def new_queues(self) -> None:
        self.prompt_q, self.rollout_q, self.scored_q = placement.make_queues(self.cfg)

    def ready(self) -> None:
        """Wait until every rollout worker and scorer has finished its constructor. One that dies
        meanwhile (e.g. a replacement killed while it starts) raises ComponentFailure: the
        recovery goes round again and replaces it too."""
        try:
            ray.get([a.__ray_ready__.remote() for a in self.workers + self.scorers])
        except ray.exceptions.RayActorError as err:
            raise ComponentFailure(f"an actor died while the others started: {_first_line(err)}") from err

    def catch_up(self, worker_indices: list[int]) -> None:
        """Load the newest published version into these (replacement) workers: a restarted
        actor reruns its constructor, so it would otherwise generate with the base model."""
        if worker_indices and self.streamer is not None:
            self.streamer.catch_up(self.learners, self.workers)
        elif worker_indices and self.published is not None:
            try:
                ray.get([self.workers[i].load_weights.remote(*self.published) for i in worker_indices])
            except ray.exceptions.RayActorError as err:
                raise ComponentFailure(f"a replacement worker died loading weights: {_first_line(err)}") from err

    # ------------------------------------------------------------------ learner group and weights
    def _learner_get(self, refs: list, what: str) -> list:
        return learner_results(self.learners, refs, what)

    def train_step(self, refs: list, group_size: int) -> dict:
        # Every learner rank gets the same list of refs; Ray resolves them in each process.
        results = self._learner_get(
            [learner.train_step.remote(refs, group_size) for learner in self.learners], "train_step"
        )
        return dict(results[0])

    def publish(self, version: int, probes: list[list[int]]) -> dict:
        """Publish `version` from the learners (state dict in the object store, owned by this
        driver; or streamed to the workers: the state dict only for a Serve follower).
        Colocated: every rank gathers it and keeps it for its own engine; no refs (None)."""
        if self.colocated:
            self._learner_get([r.publish.remote(version, probes) for r in self.learners], "publish")
            return {"state_ref": None, "meta_ref": None}
        if self.streamer is not None:
            refs = self.streamer.publish(self.learners, self.workers, version, probes)
            self.published = (refs["state_ref"], refs["meta_ref"])
            return refs
        calls = [learner.publish.options(num_returns=2).remote(version, probes) for learner in self.learners]
        self._learner_get([c[0] for c in calls], "publish")
        meta_ref, state_ref = calls[0]
        self.published = (state_ref, meta_ref)
        return {"state_ref": state_ref, "meta_ref": meta_ref}

    def load_published(self) -> dict:
        """Load the newest published version, verified, into every worker (colocated: each rank's
        engine loads the copy its own rank gathered; streamed with train.max_policy_lag >= 1: the
        swap may still be in flight, see settle_weights)."""
        if self.colocated:
            results = self._learner_get([r.load_published.remote() for r in self.learners], "load_weights")
            return {
                "probe_max_diff": max(r["probe_max_diff"] for r in results),
                "load_s": max(r["seconds"] for r in results),
                "bytes": results[0]["bytes"],
            }
        if self.streamer is not None:
            loaded = self.streamer.deliver(self.learners, self.workers)
            self.published = (self.streamer.state_ref, self.streamer.meta)  # a failed stream was re-sent
            return loaded
        try:
            results = ray.get([w.load_weights.remote(*self.published) for w in self.workers])
        except ray.exceptions.RayActorError as err:
            raise ComponentFailure(f"a rollout worker died loading weights: {_first_line(err)}") from err
        return {
            "probe_max_diff": max(r["probe_max_diff"] for r in results),
            "load_s": max(r["seconds"] for r in results),
            "bytes": results[0]["bytes"],  # what each worker received (adapters only with model.lora.sync)
        }  # slowest worker: checksum + load + probe

    def settle_weights(self) -> dict | None:
        """Wait until every worker runs the newest published version (a streamed swap left in
        flight by load_published); None when nothing was in flight."""
        return self.streamer.settle() if self.streamer is not None else None

    def save_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank writes its shards (+ small per-rank state) into `ckpt_dir`."""
        refs = [learner.save_checkpoint.remote(str(ckpt_dir)) for learner in self.learners]
        return self._learner_get(refs, "checkpoint")[0]

    def load_checkpoint(self, ckpt_dir) -> dict:
        """Every learner rank restores from `ckpt_dir` (DCP reshards to this world size)."""
        refs = [learner.load_checkpoint.remote(str(ckpt_dir)) for learner in self.learners]
        return self._learner_get(refs, "load")[0]

    def save_final(self, out_dir) -> None:
        self._learner_get([learner.save_hf.remote(str(out_dir)) for learner in self.learners], "save_hf")

    def shutdown(self, graceful: bool = True) -> None:
        """graceful=False after a learner failure: ranks stuck in a collective never answer."""
        for learner in self.learners if graceful else []:
            try:
                ray.get(learner.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for a in self.scorers + self.learners + ([] if self.colocated else self.workers):
            ray.kill(a)
        for q in self.queues():
            if q is not None:
                q.shutdown()
        placement.release(self.pg)


def learner_results(learners: list, refs: list, what: str) -> list:
    """ray.get that fails as soon as one rank fails (its peers may wait forever in a collective);
    a dead learner process raises LearnerFailure."""
    waiting = list(refs)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            ray.get(done)
        return ray.get(refs)
    except Exception as err:
        pings = [learner.__ray_ready__.remote() for learner in learners]
        ray.wait(pings, num_returns=len(pings), timeout=5)
        dead = [rank for rank, p in enumerate(pings) if _died(p)]
        if isinstance(err, _CRASHED) or dead:
            raise LearnerFailure(f"learner {what} failed (dead ranks: {dead}): {_first_line(err)}") from err
        raise


def _streamer(cfg: Config, learners: list, pg, nccl: bool) -> WeightStreamer:
    """The weight-sync group's driver side: rendezvous on learner rank 0's node, the layout once."""
    host, port = placement.learner_node_address(pg)
    spec = GroupSpec(
        host,
        port,
        world_size=1 + cfg.rollout.num_workers,
        generation=0,
        backend="nccl" if nccl else "gloo",
        timeout_s=cfg.rollout.weight_sync_timeout_s,
    )
    return WeightStreamer(
        spec,
        layout=ray.get(learners[0].weight_layout.remote()),
        defer=cfg.train.max_policy_lag >= 1,
        keep_state_dict=cfg.serve.enabled,
    )


def unresponsive(actors: list, timeout_s: float = 10, pings: int = 3, starting: set[int] = frozenset()) -> list[int]:
    """Indices of `actors` that are dead: the ping fails with RayActorError (dead for sure:
    at once), or `pings` pings in a row of `timeout_s` each went unanswered. One missed ping is
    not enough: a live actor on a loaded machine (or inside a long call) may miss one.

    `starting`: actors just created whose constructor may still be running (a vLLM engine's
    start takes over 30 s on a loaded machine, and pings queue behind it): only a RayActorError
    makes them dead; waiting for them to start is `Components.ready`'s job (seen in a loaded
    suite run: a replacement still starting was declared dead by the next round and replaced
    again)."""
    dead, suspects = [], list(range(len(actors)))
    for _ in range(pings):
        refs = {i: actors[i].__ray_ready__.remote() for i in suspects}
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        dead += [i for i, ref in refs.items() if _died(ref)]
        suspects = [i for i, ref in refs.items() if not _answers(ref) and i not in dead]
        if not suspects or set(suspects) <= set(starting):
            break
    return sorted(dead + [i for i in suspects if i not in starting])


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
