"""Crash recovery, all of it, and what it cost the run (docs/reliability.md).

    rollout worker / reward scorer / queue died  ─▶ ComponentFailure
        Recovery.recover(pipe, err): replace every dead actor (a new one of the same name),
        rebuild all three queues, load the newest published weights into a new rollout worker,
        then put every pending batch not yet collected again; a copy that arrives twice is
        dropped by batch id (BatchPipeline.collect). Out of restarts: the error names the
        batches in flight at every one of the component's deaths.
    learner process died  ─▶ LearnerFailure
        restart_learners(attempt, ...): the attempt is torn down and run again from the latest
        checkpoint (from the start if there is none yet), up to train.max_restarts times.

FaultLog keeps the `faults/*` counters (logged every step and in summary.json) and one event
per recovery; it outlives learner restarts. Injection for tests: rl_service/testing/faults.py.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rl_service.controller import checkpoint
from rl_service.infra.components import ComponentFailure, Components, LearnerFailure
from rl_service.testing import faults

if TYPE_CHECKING:
    from rl_service.controller.pipeline import BatchPipeline

T = TypeVar("T")

COUNTERS = (
    "faults/restarts_rollout",
    "faults/restarts_reward",
    "faults/restarts_queue",
    "faults/restarts_learner",
    "faults/batches_regenerated",
    "faults/duplicates_dropped",
    "faults/recover_s",
    "faults/torn_log_lines",
)


class FaultLog:
    """What faults cost a run: cumulative counters and one event per recovery.
    Survives learner restarts (`train` keeps one per run)."""

    def __init__(self):
        self.counts: dict[str, float] = {k: 0 for k in COUNTERS}
        self.events: list[dict] = []
        self.t0 = time.perf_counter()
        """Start of the run's first attempt (wall time includes restarts)."""
        self.step = 0
        """The step being worked on (1-based), for events."""
        self.failed_at: float | None = None
        """When the last learner failure was caught, until the restarted attempt is running again."""
        self.restarted_from: list[int] = []
        """The checkpoint step each learner restart resumed from (0: the start)."""

    def add(self, key: str, value: float = 1) -> None:
        self.counts[key] += value

    def event(self, **info) -> None:
        self.events.append(info)
        self.counts["faults/recover_s"] += info.get("recover_s", 0.0)

    def learner_back(self, resumed_from_step: int) -> None:
        """The attempt after a learner failure is running again: record what the failure cost."""
        if self.failed_at is None:
            return
        self.event(
            kind="learner",
            step=self.step,
            resumed_from_step=resumed_from_step,
            steps_redone=self.step - 1 - resumed_from_step,
            recover_s=time.perf_counter() - self.failed_at,
        )
        self.failed_at = None

    def summary(self) -> dict:
        return {**self.counts, "faults/events": list(self.events)}


class Recovery:
    """Replaces dead rollout workers, scorers and queues of one attempt and re-puts the
    pipeline's pending batches. Each component name may die `max_restarts` times."""

    def __init__(self, comps: Components, flog: FaultLog, max_restarts: int):
        self.comps, self.flog, self.max_restarts = comps, flog, max_restarts
        self.restarts: Counter = Counter()
        """Replacements per actor/queue name (`rollout-0`, `reward-0`, `prompt-queue`...)."""
        self.suspects: dict[str, set[int]] = {}
        """name -> batch ids in flight at every one of its deaths (named when restarts run out)."""
        self.replaced = {"rollout": 0, "reward": 0, "queue": 0}
        """What the latest replacement replaced (for the fault event)."""
        self.uncaught: set[int] = set()
        """Replacement workers not yet given the current weights: a round that replaced them and
        then met another death leaves them to the next round (which would else catch up only
        its own, and they would generate with the base model: stale samples)."""
        self.recoveries = 0
        """replace_dead calls so far (the fault plan's `kill_in_recovery:<n>` key)."""
        self.loops_down = False
        """The loops were stopped by a replacement that then met another death: the next one
        must start them again (its own drop_queues finds none running)."""

    def retrying(self, pipe: BatchPipeline, fn: Callable[[], T]) -> T:
        """fn(), recovering from component crashes until it succeeds."""
        while True:
            try:
                return fn()
            except ComponentFailure as err:
                self.recover(pipe, err)

    def recover(self, pipe: BatchPipeline, err: ComponentFailure | None) -> None:
        """Replace what died and put every batch not trained (nor collected) again."""
        while err is not None:  # recovery itself may meet another crash: go round again
            t, redo = time.perf_counter(), []
            self.replaced = {"rollout": 0, "reward": 0, "queue": 0}
            try:
                self.replace_dead(pipe)
                redo = [b for b in sorted(pipe.pending) if b not in pipe.got]
                for b in redo:
                    self.comps.put_prompts(pipe.pending[b])
                err = None
            except ComponentFailure as again:
                err = again
            self.flog.add("faults/batches_regenerated", len(redo))
            self.flog.event(
                kind="component",
                step=self.flog.step,
                replaced=self.replaced,
                batches_regenerated=redo,
                recover_s=time.perf_counter() - t,
                again=None if err is None else str(err),
            )

    def replace_dead(self, pipe: BatchPipeline) -> dict[str, int]:
        """Replace every dead rollout worker and scorer, rebuild all three queues, restart the loops.

        All queues are rebuilt (not only a dead one): items in them may be refs owned by a dead
        actor, and loops of live actors blocked on an old queue only stop when it is killed. The
        caller re-puts every batch it issued and has not trained. A replacement worker reruns its
        constructor (the base model) and so loads the newest published weights before its loop starts.
        The batch ids issued and not collected are named in the error when restarts run out.
        Returns how many of each kind were replaced: {"rollout": n, "reward": n, "queue": n}
        (also `self.replaced`, and counted in the fault log at once)."""
        comps, in_flight = self.comps, sorted(set(pipe.pending) - set(pipe.got))
        # a replacement made by a round that met another death may still be starting: not dead for that
        dead, dead_queues = comps.dead_actors(starting=self.uncaught), comps.dead_queues()
        names = comps.actor_names()
        for name in [names[i] for i in dead] + dead_queues:
            self._count_death(name, in_flight)
        n_rollout = sum(i < len(comps.workers) for i in dead)
        self.replaced = {"rollout": n_rollout, "reward": len(dead) - n_rollout, "queue": len(dead_queues)}
        for kind, count in self.replaced.items():  # counted now: a death below must not lose them
            self.flog.add(f"faults/restarts_{kind}", count)
        if self.replaced["reward"]:  # scored refs are owned by their scorer: gone with it
            pipe.got.clear()
        was_running = comps.drop_queues() or self.loops_down
        self.loops_down = was_running  # until start_loops below: a death in between goes round again
        for i in dead:
            comps.replace_actor(i)
        self.uncaught |= {i for i in dead if i < len(comps.workers)}
        comps.new_queues()
        self.recoveries += 1
        faults.point("kill_in_recovery", self.recoveries, actor=comps.scorers[0])  # test hook
        comps.ready()
        comps.catch_up(sorted(self.uncaught))
        self.uncaught.clear()
        if was_running:
            comps.start_loops()
        self.loops_down = False
        return self.replaced

    def _count_death(self, name: str, in_flight: list[int]) -> None:
        self.restarts[name] += 1
        self.suspects[name] = self.suspects.get(name, set(in_flight)) & set(in_flight)
        if self.restarts[name] > self.max_restarts:
            raise RuntimeError(
                f"{name} died {self.restarts[name]} times, more than train.max_restarts="
                f"{self.max_restarts}; batches in flight at every one of its deaths: "
                f"{sorted(self.suspects[name])} (at the last one: {in_flight})"
            )


def restart_learners(
    attempt: Callable[[Path | None], dict],
    resume_from: Path | None,
    checkpoints: Path,
    flog: FaultLog,
    max_restarts: int,
) -> dict:
    """attempt(resume_from) until it returns. After a LearnerFailure the attempt runs again from
    the latest checkpoint under `checkpoints` (the start if there is none), at most
    `max_restarts` times; the restarts are counted in `flog`."""
    while True:
        try:
            return attempt(resume_from)
        except LearnerFailure as err:
            flog.add("faults/restarts_learner")
            if flog.counts["faults/restarts_learner"] > max_restarts:
                raise LearnerFailure(f"{err}; no restarts left (train.max_restarts={max_restarts})") from err
            resume_from = checkpoint.verified_latest(checkpoints)
            flog.failed_at = time.perf_counter()
            flog.restarted_from.append(checkpoint.load_controller_state(resume_from)["step"] if resume_from else 0)
            print(
                f"learner failed at step {flog.step}: {err}\nrestarting from "
                f"{resume_from or 'the start (no checkpoint yet)'}",
                file=sys.stderr,
                flush=True,
            )
