"""`rl-service sweep` on the embedded Ray: real trials (each a whole `rl-service train` run),
SIGKILLed mid-way and rerun: the finished trial is kept, the unfinished one resumes from its own
checkpoint, and results.csv / results.png cover both."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _sweep_command(root: Path) -> list[str]:
    return [
        sys.executable, "-m", "rl_service.cli", "sweep", str(REPO / "configs" / "ci" / "tiny.yaml"),
        f"run_root={root}", "train.eval_every=2", "train.checkpoint_every=1", "tracking.ray_metrics=false",
        # the second trial is long enough not to finish in the seconds its Ray worker outlives
        # the killed sweep driver (on an idle machine a tiny-model step takes ~1 s)
        "--grid", "train.steps=4,12", "--max-concurrent", "1", "--name", "s",
    ]  # fmt: skip


def _train_processes(root: Path) -> list[int]:
    """PIDs of `rl-service train` processes of this sweep still alive."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in cmd and f"run_root={root / 's-sweep' / 'trials'}".encode() in cmd:
            out.append(int(pid))
    return out


def _count_starts(log: Path) -> int:
    """Trainings a trial's log shows starting (each prints its `policy: ...` line)."""
    return sum(line.startswith("policy: ") for line in log.read_text().splitlines())


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_unfinished_trial_only(tmp_path, tiny_model_dir):
    trials = tmp_path / "s-sweep" / "trials"
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(
            _sweep_command(tmp_path), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:  # kill once one trial has finished and the other has checkpointed a step, at a random moment
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the sweep never got half-way"
            done = [d.name for d in trials.glob("trial-*") if (d / "summary.json").is_file()]
            going = [d.name for d in trials.glob("trial-*") if d.name not in done and any(d.glob("checkpoints/step-*"))]
            if done and going:
                break
            time.sleep(0.2)
        time.sleep(random.uniform(0, 1.5))
        finished, killed = done[0], going[0]
        summary_before = (trials / finished / "summary.json").read_bytes()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(3)
    orphans = _train_processes(tmp_path)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "a trial's training process outlived the killed sweep"
    assert not (trials / killed / "summary.json").is_file(), "the kill came too late to test a resume"

    rerun = subprocess.run(_sweep_command(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "best: trial-" in rerun.stdout

    starts = {d: _count_starts(trials / f"{d}.log") for d in (finished, killed)}
    assert starts == {finished: 1, killed: 2}, f"trainings started per trial: {starts}"
    assert "resuming from" in (trials / f"{killed}.log").read_text()
    assert (trials / finished / "summary.json").read_bytes() == summary_before, "the finished trial ran again"
    with open(tmp_path / "s-sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["train.steps"], r["status"]) for r in rows] == [
        ("trial-000", "4", "done"),
        ("trial-001", "12", "done"),
    ]
    for r in rows:
        assert 0.0 <= float(r["eval/accuracy"]) <= 1.0 and r["step"] == r["train.steps"] and float(r["wall_s"]) > 0
    assert (tmp_path / "s-sweep" / "results.png").read_bytes()[:4] == b"\x89PNG"
