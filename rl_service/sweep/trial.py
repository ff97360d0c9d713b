"""One sweep trial: a whole `rl-service train` run, its evaluations reported to Ray Tune.

    trial process (Tune function trainable, 0.01 CPU)
        └── `python -m rl_service.cli train CONFIG <overrides> name=trial-NNN --resume auto`
              attached to the sweep's Ray (RAY_ADDRESS): its rollout workers, scorers and learners
              reserve their own resources as any run's do (learners in their placement group)
        follow <trials>/trial-NNN/metrics.jsonl: each row with the metric -> tune.report(...)
        at exit: summary.json's `<metric>_end` -> the last report; exit != 0 -> the trial errors

A separate process per trial keeps each run's named actors in its own Ray job (two trials'
`rollout-0` never meet) and lets a trial restarted by a restored sweep continue from its own
last checkpoint (`--resume auto`). The training process dies with the trial: when Tune stops it
(ASHA) or the trial thread ends, it is terminated; when the whole sweep is killed, the kernel
kills it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rl_service.infra.child_process import die_with_parent, last_error
from rl_service.sweep.grid import overrides_of

POLL_S = 1.0


@dataclass(frozen=True)
class SweepSpec:
    """What every trial of one sweep shares (passed to the trainable with tune.with_parameters)."""

    config: str
    """The experiment YAML (absolute path)."""
    base_overrides: tuple[str, ...]
    """Overrides for every trial (from the command line), before the trial's own."""
    points: tuple[dict[str, str], ...]
    """Trial i's overrides: points[i] (grid.grid_points)."""
    trials_dir: str
    """Absolute `<sweep dir>/trials`: trial i's run directory is trial-<i:03d> under it."""
    metric: str
    """The metric reported to Tune (and ranked on): `eval/accuracy` by default."""
    address: str
    """The sweep's Ray (GCS address) the training processes attach to."""
    cwd: str
    """Working directory of the training processes (relative paths of the config resolve here)."""


def trial_name(point: int) -> str:
    return f"trial-{point:03d}"


def train_command(spec: SweepSpec, point: int) -> list[str]:
    overrides = [*spec.base_overrides, *overrides_of(spec.points[point])]
    overrides += [f"name={trial_name(point)}", f"run_root={spec.trials_dir}"]
    return [sys.executable, "-m", "rl_service.cli", "train", spec.config, *overrides, "--resume", "auto"]


def run_trial(config: dict, spec: SweepSpec) -> None:
    """Tune function trainable: train point `config["point"]`, report each eval, then the end."""
    from ray import tune

    point = int(config["point"])
    run_dir = Path(spec.trials_dir) / trial_name(point)
    log = Path(spec.trials_dir) / f"{trial_name(point)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # a run attached to a cluster waits one metrics-export interval before it exits (tracking/run.py):
    # 2 s here, not Ray's default 10 s, unless the user set it
    env = {"RAY_metrics_report_interval_ms": "2000", **os.environ, "RAY_ADDRESS": spec.address}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            train_command(spec, point), cwd=spec.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    follower = MetricFollower(run_dir / "metrics.jsonl", spec.metric)
    try:
        while proc.poll() is None:
            for row in follower.new_rows():
                tune.report({**row, "point": point})
            time.sleep(POLL_S)
        for row in follower.new_rows():
            tune.report({**row, "point": point})
        if proc.returncode != 0:
            raise RuntimeError(f"{trial_name(point)}: rl-service train exited {proc.returncode}: {last_error(log)}")
        summary = json.loads((run_dir / "summary.json").read_text())
        tune.report({**final_metrics(summary, spec.metric), "point": point, "done": True})
    finally:
        stop_process(proc)


class MetricFollower:
    """New rows of a run's metrics.jsonl that carry `metric`, by step: a run restarted from a
    checkpoint rewrites the rows after it, and a row is reported once."""

    def __init__(self, path: Path, metric: str):
        self.path, self.metric, self.last_step = path, metric, 0

    def new_rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            step = row.get("step", 0)
            if step > self.last_step and isinstance(row.get(self.metric), (int, float)):
                out.append({"step": step, self.metric: float(row[self.metric])})
                self.last_step = step
        return out


def final_metrics(summary: dict, metric: str) -> dict[str, float]:
    """The end of a finished run: the metric (`<metric>_end` for held-out metrics) and every
    `eval/*_end` / `_start` figure of its summary."""
    out = {k: float(v) for k, v in summary.items() if k.startswith("eval/") and isinstance(v, (int, float))}
    value = summary.get(f"{metric}_end", summary.get(metric))
    if isinstance(value, (int, float)):
        out[metric] = float(value)
    out["step"] = summary.get("steps", 0)
    out["wall_s"] = float(summary.get("wall_s", 0.0))
    return out


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, if still running."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
