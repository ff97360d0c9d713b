"""Component faults: the counters a run reports about them, and the hooks tests use to inject them.

Injection (tests only): $RL_SERVICE_FAULT is a comma-separated list of `kind:key[xN]`:

    kill_rollout:<batch_id>     the rollout worker that took that batch SIGKILLs itself mid-generation
    kill_scorer:<batch_id>      the reward scorer that took that batch SIGKILLs itself before scoring it
    kill_queue:<batch_id>       the driver kills the prompt-queue actor right after putting that batch
    kill_learner:<step>         the driver kills the last learner process while it trains that step
    kill_in_checkpoint:<step>   the driver SIGKILLs itself after the learners wrote that step's shards

Each entry fires once per run (N times with `xN`): firing creates a marker file in
$RL_SERVICE_FAULT_DIR (the controller points it at <run_dir>/faults), so a restarted actor,
which reruns its constructor and forgets everything, does not kill itself again.

No ray import: actor bodies call these hooks in their run loops.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

FAULT_ENV = "RL_SERVICE_FAULT"
MARKER_ENV = "RL_SERVICE_FAULT_DIR"

COUNTERS = (
    "faults/restarts_rollout",
    "faults/restarts_reward",
    "faults/restarts_queue",
    "faults/restarts_learner",
    "faults/batches_regenerated",
    "faults/duplicates_dropped",
    "faults/recover_s",
)


_ENTRY = re.compile(r"^(\w+):(\d+)(?:x(\d+))?$")


def _planned() -> dict[str, int]:
    """`kind:key` -> times to fire, from $RL_SERVICE_FAULT."""
    plan = {}
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_ENV, "").split(","))):
        m = _ENTRY.match(entry)
        if m is None:
            raise ValueError(f"${FAULT_ENV}: {entry!r} is not kind:<int>[x<times>]")
        plan[f"{m[1]}:{m[2]}"] = int(m[3] or 1)
    return plan


def fire(kind: str, key: int | str) -> bool:
    """True if the fault `kind:key` is planned and has fired fewer times than planned (claims one)."""
    spec = f"{kind}:{key}"
    times = _planned().get(spec, 0)
    if not times:
        return False
    marker_dir = Path(os.environ.get(MARKER_ENV) or ".")
    marker_dir.mkdir(parents=True, exist_ok=True)
    for i in range(times):
        try:  # O_EXCL: exactly one process claims each firing, even across restarts
            os.close(os.open(marker_dir / f"{spec}#{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_self_after(delay_s: float) -> None:
    """SIGKILL this process from a timer thread: it dies in whatever it is doing then."""
    threading.Thread(target=lambda: (time.sleep(delay_s), kill_self()), daemon=True).start()


class FaultLog:
    """What faults cost a run: cumulative counters (logged every step and in summary.json)
    and one event per recovery. Survives learner restarts (the controller keeps one per run)."""

    def __init__(self):
        self.counts: dict[str, float] = {k: 0 for k in COUNTERS}
        self.events: list[dict] = []
        self.t0 = time.perf_counter()
        """Start of the run's first attempt (wall time includes restarts)."""
        self.step = 0
        """The step being worked on (1-based), for events."""
        self.failed_at: float | None = None
        """When the last learner failure was caught, until the restarted attempt is running again."""

    def add(self, key: str, value: float = 1) -> None:
        self.counts[key] += value

    def event(self, **info) -> None:
        self.events.append(info)
        self.counts["faults/recover_s"] += info.get("recover_s", 0.0)

    def summary(self) -> dict:
        return {**self.counts, "faults/events": list(self.events)}
