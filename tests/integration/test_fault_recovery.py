"""A component that keeps dying: the run fails, and the error names what was in flight.

    E   a scorer that dies on batch 1 every time (fault hook, rl_service/testing/faults.py),
        train.max_restarts=1 -> the run fails and the error names batch 1

Recovery itself (every component killed at random moments, the run ending with the
uninterrupted run's weights) is tests/integration/test_chaos.py.
"""

from __future__ import annotations

import re

import pytest

from rl_service.testing.chaos_trial import run_train


@pytest.mark.slow
def test_scorer_out_of_restarts_names_the_batch(tmp_path, tiny_model_dir):
    # the chaos trials' run (rl_service/testing/chaos_trial.py), its scorer dying on batch 1 every time
    proc, secs, _ = run_train(
        tmp_path / "runs", "E", tiny_model_dir, "train.max_restarts=1", env={"RL_SERVICE_FAULT": "kill_scorer:1x2"}
    )
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
