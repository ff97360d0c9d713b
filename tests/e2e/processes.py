"""A CLI command run by a test as a subprocess in its own session, stopped by PID: SIGTERM (a
clean stop) or SIGKILL of it and every process under it (a crash: driver, raylet, GCS, workers)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.integration.conftest import REPO


class CliProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = Path(log_path)
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rl_service.cli", *args],
            cwd=REPO,
            env={**{k: v for k, v in os.environ.items() if k != "RL_SERVICE_API_KEY"}, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}; see {self.log_path}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s}s; see {self.log_path}"
            time.sleep(0.5)

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill9(self) -> None:
        """SIGKILL the command and all its descendants by PID: a crash, nothing flushed."""
        procs = self.tree()
        ray_dirs = ray_temp_dirs(procs)  # the killed driver cannot remove its Ray session dir
        kill9_list(procs)
        self.proc.wait(30)
        self.log.close()
        for d in ray_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def terminate(self, timeout_s: float = 90) -> int | None:
        procs = self.tree()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        kill9_list([p for p in procs if alive(p)])
        self.log.close()
        return rc


def kill9_list(procs: list[psutil.Process], timeout_s: float = 30) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    # Orphans may stay zombies here (no init reaping them in a container): dead is enough.
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)


def ray_temp_dirs(procs: list[psutil.Process]) -> set[str]:
    dirs = set()
    for p in procs:
        try:
            dirs.update(m.group(1) for arg in p.cmdline() if (m := re.search(r"(/tmp/rls-ray-\w+)", arg)))
        except psutil.Error:
            pass
    return dirs


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
