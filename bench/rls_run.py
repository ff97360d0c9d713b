"""Run rl_service training through its own CLI and read back the run's metrics.

`rl-service train CONFIG <overrides>` (configs/quickstart.yaml unless told) in a subprocess (its own Ray, its
own engines and learners, exactly what a user runs), outputs under .tmp/bench/runs/<name>/.
The figures come from the run's own `metrics.jsonl` (one row per step, see controller.py)
and `summary.json`. With BENCH_PROFILE=1 the run is sampled by py-spy (bench/profile.py).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import profile
from bench.common import REPO, log

RUN_ROOT = REPO / ".tmp" / "bench" / "runs"
CLI = [str(Path(sys.executable).with_name("rl-service")), "train"]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def train_run(name: str, overrides: list[str], timeout_s: float = 3600, config: Path = QUICKSTART) -> dict:
    """One training run -> {"rows": metrics.jsonl rows, "summary": summary.json, "process_s": wall
    of the whole command (Ray start, model load, engines, eval included)}. Raises on failure,
    with the tail of the run's log."""
    run_dir = RUN_ROOT / name
    log_path = RUN_ROOT / f"{name}.log"
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    if reusable(run_dir / "summary.json"):
        log(f"{name}: reused (BENCH_REUSE)")
        return _read_run(run_dir, recorded_process_s(name), None)
    # No periodic checkpoints (on by default since 2026-12-02): the benchmarks time training, and
    # the systems they are compared with write none either. A bench's own overrides come after.
    base = [f"name={name}", f"run_root={RUN_ROOT}", "tracking.wandb=false", "train.checkpoint_every=0"]
    args = CLI + [str(config), *base, *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    prof = RUN_ROOT / f"{name}.collapsed"
    with log_path.open("w") as fh:
        proc = subprocess.run(
            profile.wrap(args, prof), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
        )
    process_s = time.perf_counter() - t0
    (RUN_ROOT / f"{name}.process_s").write_text(f"{process_s}\n")
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"rl-service train {name} exited {proc.returncode}; log {log_path}:\n{tail}")
    run = _read_run(run_dir, process_s, profile.stage_shares(prof) if profile.enabled() else None)
    log(
        f"{name}: {len(run['rows'])} steps, process {process_s:.0f}s, accuracy "
        f"{run['summary'].get('eval/accuracy_start')} -> {run['summary'].get('eval/accuracy_end')}"
    )
    return run


def _read_run(run_dir: Path, process_s: float, stage_shares) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"rows": rows, "summary": summary, "process_s": process_s, "run_dir": str(run_dir), "profile": stage_shares}


def reusable(done_marker: Path) -> bool:
    """BENCH_REUSE=<ISO time>: a run whose output is complete (written last, by a run that exited
    0) and newer than that time is read back instead of run again -- to finish a long benchmark
    one of whose runs failed, with the other runs' figures from the same invocation's earlier
    attempt (the time keeps out runs of older invocations). Off by default."""
    since = os.environ.get("BENCH_REUSE")
    if not since or not done_marker.exists():
        return False
    return done_marker.stat().st_mtime >= datetime.datetime.fromisoformat(since).timestamp()


def recorded_process_s(name: str) -> float:
    """The wall of a finished run's whole command, if its sidecar was written (NaN otherwise)."""
    side = RUN_ROOT / f"{name}.process_s"
    return float(side.read_text()) if side.exists() else float("nan")


def step_tokens(row: dict) -> float:
    """Completion tokens trained in this step (the controller logs tokens / step_s)."""
    return row["perf/tokens_per_s"] * row["timing_s/step"]


def steady(rows: list[dict], key: str) -> float:
    """Median of `key` over the steps after the first (which also fills the pipeline)."""
    xs = [r[key] for r in (rows[1:] if len(rows) > 1 else rows) if r.get(key) is not None and r[key] == r[key]]
    return statistics.median(xs) if xs else None  # None: the run did not log it (older controller)


def timing_summary(rows: list[dict]) -> dict[str, float]:
    """Steady-state medians of the step's timings and the throughput over all steps."""
    keys = [
        "timing_s/step",
        "timing_s/generate",
        "timing_s/reward",
        "timing_s/wait",
        "timing_s/train",
        "timing_s/weight_sync",
        "timing_s/train_compute",
        "timing_s/publish",
        "timing_s/load",
    ]
    # train_compute: the learner's own time (train minus it = Ray dispatch + batch transfer);
    # publish: learner gather/checksum/probe/put; load: slowest worker's checksum+load+probe
    out = {k.removeprefix("timing_s/") + "_s": steady(rows, k) for k in keys}
    total_s = sum(r["timing_s/step"] for r in rows)
    tokens = sum(step_tokens(r) for r in rows)
    out.update(
        {
            "steps": len(rows),
            "loop_s": total_s,
            "completion_tokens": tokens,
            "tokens_per_s": tokens / total_s,
            "steady_tokens_per_s": steady_tokens_per_s(rows),
        }
    )
    return out


def steady_tokens_per_s(rows: list[dict]) -> float:
    rest = rows[1:] if len(rows) > 1 else rows
    return sum(step_tokens(r) for r in rest) / sum(r["timing_s/step"] for r in rest)
