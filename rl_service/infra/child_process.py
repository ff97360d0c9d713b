"""Helpers for a command that runs another `rl-service` command as a child process (a sweep's
trials, the online service's rounds): the child dies with its parent, and its one-line error."""

from __future__ import annotations

import ctypes
import signal
from pathlib import Path


def die_with_parent() -> None:
    """`preexec_fn`: in the child, before exec, SIGKILL it when the parent thread that started it
    dies (Linux prctl PR_SET_PDEATHSIG): a SIGKILLed parent leaves no orphan training."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def last_error(log: Path) -> str:
    """The `error: ...` line a failed `rl-service` command printed to `log` (or its last line)."""
    lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:300]
