"""Fault injection for tests: the plan, and what each planned fault does where it fires.

$RL_SERVICE_FAULT is a comma-separated list of `kind:key[xN]`:

    kill_rollout:<batch_id>     the rollout worker that took that batch SIGKILLs itself mid-generation
    kill_scorer:<batch_id>      the reward scorer that took that batch SIGKILLs itself before scoring it
    kill_queue:<batch_id>       the driver kills the prompt-queue actor right after putting that batch
    kill_learner:<step>         the driver kills the last learner process while it trains that step
    kill_in_checkpoint:<step>   the driver SIGKILLs itself after the learners wrote that step's shards
    kill_in_recovery:<n>        the n-th recovery kills reward scorer 0 while its replacements start
    bad_version:<version>       the online service publishes that policy version scrambled (rows of
                                every matrix permuted, checksum and probes made to match): a version
                                that loads and verifies but answers garbage, as a bad deploy would

Production code holds one call per fault point and nothing else:

    faults.point("kill_queue", batch_id, queue=q)        do the fault here, if it is planned
    with faults.during("kill_rollout", batch_id): ...    die inside the block's work, if planned

Each entry fires once per run (N times with `xN`): firing creates a marker file in
$RL_SERVICE_FAULT_DIR (`arm(run_dir)` points it at <run_dir>/faults), so a restarted actor,
which reruns its constructor and forgets everything, does not kill itself again.
What recovery does about a fault (and its counters) is rl_service/controller/recovery.py.

No ray import at module level: actor bodies call these hooks in their run loops.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FAULT_ENV = "RL_SERVICE_FAULT"
MARKER_ENV = "RL_SERVICE_FAULT_DIR"

_ENTRY = re.compile(r"^(\w+):(\d+)(?:x(\d+))?$")


def arm(run_dir: Path) -> None:
    """With a plan set, keep its fired-fault markers with the run (so each fires once per run)."""
    if os.environ.get(FAULT_ENV):
        os.environ[MARKER_ENV] = str(run_dir / "faults")


def actor_env() -> dict[str, str]:
    """The plan and its marker dir, when set, for an actor's runtime_env: the marker dir is set
    by the driver after Ray started, so actors only see it this way."""
    return {k: os.environ[k] for k in (FAULT_ENV, MARKER_ENV) if os.environ.get(k)}


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


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(delay_s: float, action: Callable[[], Any]) -> None:
    """action() from a timer thread: it lands in whatever the process is doing then."""
    threading.Thread(target=lambda: (time.sleep(delay_s), action()), daemon=True).start()


def _kill_actor(actor) -> None:
    import ray

    ray.kill(actor, no_restart=True)


def _scramble(state_dict) -> None:
    """Permute the rows of every matrix in place, seeded: same shapes and statistics, no function."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for tensor in state_dict.values():
        if tensor.dim() == 2 and tensor.shape[0] > 1:
            tensor.copy_(tensor[torch.randperm(tensor.shape[0], generator=gen)])


# What a fault does at its point; the keyword names the target the point passes.
_AT_POINT: dict[str, Callable[..., None]] = {
    "kill_scorer": _kill_self,  # the scorer dies holding the batch
    "kill_in_checkpoint": _kill_self,  # the driver dies between shards and commit
    "kill_queue": lambda queue: queue.kill(),  # the queue actor dies, the handle stays
    "kill_learner": lambda learner: _after(0.1, lambda: _kill_actor(learner)),  # dies mid-step
    "kill_in_recovery": _kill_actor,  # a second death while the first one's replacement starts
    "bad_version": _scramble,  # the weights about to be published
}


def point(kind: str, key: int | str, **target: Any) -> None:
    """The hook at a fault point: if `kind:key` is planned and not yet spent, do it now."""
    action = _AT_POINT[kind]
    if fire(kind, key):
        action(**target)


@contextmanager
def during(kind: str, key: int | str) -> Iterator[None]:
    """The hook around work a fault must interrupt (`kill_rollout`): if planned, SIGKILL this
    process 50 ms into the block, or at its end if the work beat the timer: the block's result
    is never delivered either way."""
    if kind != "kill_rollout":
        raise ValueError(f"no fault {kind!r} fires during work")
    crash = fire(kind, key)
    if crash:
        _after(0.05, _kill_self)
    yield
    if crash:
        _kill_self()
