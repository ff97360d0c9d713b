"""A component that keeps dying: the run fails, and the error names what was in flight.

    E   a scorer that dies on batch 1 every time (fault hook, rl_service/testing/faults.py),
        train.max_restarts=1 -> the run fails and the error names batch 1

Recovery itself (every component killed at random moments, the run ending with the
uninterrupted run's weights) is tests/integration/test_chaos.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import train_command

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = f"{Path(__file__).parent / 'partial_credit.py'}:leading_digits"
STEPS = 5


def _train(
    run_root: Path,
    name: str,
    model_dir: Path,
    *extra: str,
    fault: str = "",
) -> tuple[subprocess.CompletedProcess, float]:
    # 1-digit task with 52 eval problems: 48 training prompts, one data epoch = 3 steps of 16.
    args = train_command(
        f"name={name}",
        f"run_root={run_root}",
        f"model.path={model_dir}",
        f"train.steps={STEPS}",
        "train.max_policy_lag=0",
        "train.checkpoint_every=2",
        "task.digits=1",
        "task.num_eval=52",
        "rollout.num_workers=1",
        "tracking.ray_metrics=false",
        f"reward.fn={PLUGIN}",
        *extra,
    )
    env = {k: v for k, v in os.environ.items() if k != "RL_SERVICE_FAULT"}
    if fault:
        env["RL_SERVICE_FAULT"] = fault
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return proc, time.perf_counter() - t0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_scorer_out_of_restarts_names_the_batch(tmp_path, tiny_model_dir):
    proc, secs = _train(tmp_path / "runs", "E", tiny_model_dir, "train.max_restarts=1", fault="kill_scorer:1x2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: "))
    m = re.search(
        r"reward-0 died 2 times, more than train\.max_restarts=1; batches in flight at every "
        r"one of its deaths: \[([\d, ]*)\]",
        line,
    )
    assert m, proc.stderr[-6000:]
    assert 1 in [int(b) for b in m[1].split(",")], line
    print(f"\n[faults] scorer out of restarts: failed after {secs:.1f}s: {line}")
