"""Chaos from outside: SIGKILL a running `rl-service train`'s processes at random moments.

    Chaos(driver_pid, metrics_path, plan, seed, last_step).start()   a thread beside the run
      for role in plan:                                      e.g. rollout, reward, queue, learner, driver
        wait until the run logged a step since the last kill (it recovered and moves on)
        (none once the final step started)
        sleep U(0, the last step's length)                   somewhere inside the next step:
                                                             generating, scoring, training, syncing,
                                                             checkpointing (capped at max_delay_s)
        SIGKILL one process of that role (drawn at random)   a `Kill` recorded with the moment
                                                             (none of that role right now: the
                                                             same role after the next step)
      .stop() -> the kills made; `leftovers()` after the run: every process it ever saw still alive

Nothing here is cooperative: the run is not told, no fault hook fires (compare faults.py, whose
faults fire at points chosen in the code). Which process is what comes from the outside too:
each actor process carries its name in its environment ($RL_SERVICE_ACTOR, infra/placement.py),
queue actors are Ray's `_QueueActor` processes, the driver is the pid the harness started. All
draws come from `random.Random(seed)`: a failing trial is rerun by its seed (timing aside).

No ray, no torch: it runs in the test process, beside the run it attacks.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from rl_service.infra.env import ACTOR_ENV
from rl_service.infra.files import read_jsonl

ROLES = ("rollout", "reward", "queue", "learner", "driver")


@dataclass(frozen=True)
class Kill:
    """One trial: what was killed, when, and how far the run was."""

    role: str
    name: str
    """The component (`rollout-1`, `learner-0`, `queue`, `driver`)."""
    pid: int
    at_s: float
    """Seconds since the harness started."""
    after_step: int
    """The last step the run had logged when the process was killed."""
    delay_s: float
    """The random wait after that step's row appeared."""


def role_of(proc: psutil.Process) -> tuple[str, str] | None:
    """(role, name) of one of a run's processes, or None (Ray's own daemons, idle workers)."""
    try:
        title = proc.cmdline()[:1]
        if title and title[0].startswith("ray::_QueueActor"):
            return "queue", "queue"
        name = proc.environ().get(ACTOR_ENV)
    except psutil.Error:
        return None
    if not name:
        return None
    role = name.rsplit("-", 1)[0]
    return (role, name) if role in ROLES else None


def last_step_logged(metrics_path: Path) -> int:
    """The step of metrics.jsonl's last complete row (0: none yet; a torn last line is not a row).
    A step number, not a row count: a resumed run first truncates the rows past its checkpoint."""
    try:
        rows, _torn = read_jsonl(metrics_path)
    except FileNotFoundError:
        return 0
    return int(rows[-1]["step"]) if rows else 0


class Chaos:
    """Kill one process per entry of `plan`, each after the run logged a new step, at a random
    moment. `seen` keeps every process of the run ever observed (for `leftovers`)."""

    def __init__(
        self,
        driver_pid: int,
        metrics_path: Path,
        plan: list[str],
        seed: int,
        last_step: int,
        max_delay_s: float = 1.0,
    ):
        assert set(plan) <= set(ROLES), plan
        self.driver = psutil.Process(driver_pid)
        self.metrics_path, self.plan, self.seed = Path(metrics_path), list(plan), seed
        self.rng = random.Random(seed)
        self.max_delay_s = max_delay_s
        self.last_step = last_step
        """The run's final step: nothing is killed once it started (see `_run`)."""
        self.kills: list[Kill] = []
        self.seen: dict[int, psutil.Process] = {}
        self.seen_at: dict[int, float] = {}
        """step -> when its row was first seen (the steps' lengths pace the random delays)."""
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"chaos-{seed}")

    def start(self) -> Chaos:
        self._thread.start()
        return self

    def stop(self) -> list[Kill]:
        self._stop.set()
        self._thread.join(30)
        return self.kills

    def _observe(self) -> list[psutil.Process]:
        try:
            procs = self.driver.children(recursive=True)
        except psutil.Error:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def _wait_for_step(self, after: int) -> int | None:
        """Block until a step past `after` is logged -> that step (None: the run ended)."""
        while not self._stop.is_set():
            self._observe()
            if not _alive(self.driver):
                return None
            n = last_step_logged(self.metrics_path)
            if any(k > n for k in self.seen_at):  # rows truncated (a learner restart redoes steps)
                self.seen_at = {k: t for k, t in self.seen_at.items() if k < n}
            self.seen_at.setdefault(n, time.monotonic())
            if n > after:
                return n
            time.sleep(0.05)
        return None

    def step_length(self, n: int) -> float:
        """How long step `n` took, as seen from here (its row's arrival after the previous one's);
        max_delay_s when unknown. A delay drawn in [0, this) lands inside the next step: a delay
        longer than a step would skip steps, and a plan of k kills would need ~2k steps, not k
        (tiny models run a step in ~0.5 s; CI saw 10 kills not fit into 16 steps that way)."""
        if n in self.seen_at and n - 1 in self.seen_at:
            return min(self.max_delay_s, max(self.seen_at[n] - self.seen_at[n - 1], 0.05))
        return self.max_delay_s

    def _run(self) -> None:
        last = last_step_logged(self.metrics_path)  # a resumed run starts with the rows of its past
        plan = list(self.plan)
        while plan:
            n = self._wait_for_step(last)
            if n is None:
                return
            delay = self.rng.uniform(0, self.step_length(n))
            if self._stop.wait(delay) or not _alive(self.driver):
                return
            if last_step_logged(self.metrics_path) >= self.last_step - 1:
                # The final step and the end of the run (stop the loops, evaluate with a worker,
                # save) are left alone: a worker lost there is not replaced (docs/reliability.md).
                return
            role = plan[0]
            if role == "driver":
                victim, name = self.driver, "driver"
            else:
                found = sorted(
                    ((p, rn[1]) for p in self._observe() if (rn := role_of(p)) and rn[0] == role),
                    key=lambda x: x[0].pid,
                )
                if not found:  # none right now (e.g. being replaced): tried again after the next step
                    last = n
                    continue
                victim, name = found[self.rng.randrange(len(found))]
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                last = n
                continue
            plan.pop(0)
            self.kills.append(Kill(role, name, victim.pid, time.monotonic() - self._t0, n, delay))
            last = last_step_logged(self.metrics_path)
            if role == "driver":
                return

    def leftovers(self, grace_s: float = 30.0) -> list[str]:
        """Processes of the run still alive `grace_s` after it ended (zombies count as gone)."""
        self._observe()
        deadline = time.monotonic() + grace_s
        alive = list(self.seen.values())
        while True:
            alive = [p for p in alive if _alive(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        out = []
        for p in alive:
            try:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                pass
        return out

    def reap(self) -> None:
        """Kill whatever `leftovers` found (so a failed assertion leaves nothing behind either)."""
        for p in self.seen.values():
            if _alive(p):
                try:
                    p.kill()
                except psutil.Error:
                    pass

    def record(self) -> dict:
        return {"seed": self.seed, "plan": self.plan, "kills": [asdict(k) for k in self.kills]}


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
