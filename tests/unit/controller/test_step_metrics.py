"""The step timer and the metrics row: names, order and values as the loop computed them inline."""

import math
import time

import pytest

from rl_service.controller.step_metrics import StepTimer, SyncResult, step_metrics
from rl_service.types import BatchSummary

# The row's keys after the learner's own, in the order metrics.jsonl has always had them
# (timing_s/train is overwritten in the learner's own slot).
CONTROLLER_KEYS = [
    "step",
    "policy_version",
    "policy/lag_mean",
    "timing_s/generate",
    "timing_s/reward",
    "timing_s/wait",
    "timing_s/train_compute",
    "timing_s/weight_sync",
    "timing_s/step",
    "timing_s/publish",
    "timing_s/load",
    "weight_sync/probe_max_diff",
    "weight_sync/bytes",
    "perf/tokens_per_s",
    "perf/samples_per_s",
]


def _summary(batch_id: int, version: int, tokens: int) -> BatchSummary:
    return BatchSummary(batch_id, (batch_id,), (f"{batch_id}/0", f"{batch_id}/1"), (), version, tokens, 2.0, 0.5)


def halted_step_row(summaries: list[BatchSummary], learner: dict | None = None) -> dict:
    """The row of step 1 that did not sync nor evaluate, over `summaries`."""
    timer = StepTimer()
    for stage in ("wait", "train", "weight_sync"):
        with timer(stage):
            pass
    return step_metrics(
        step=1,
        version=1,
        learner=learner or {},
        summaries=summaries,
        timer=timer,
        sync=SyncResult(),
        evaluation=None,
        num_workers=1,
        num_scorers=1,
        gauges={},
    )


def test_timer_times_stages_and_the_step_until_stop():
    timer = StepTimer()
    with timer("wait"):
        time.sleep(0.02)
    step_s = timer.stop()
    with timer("checkpoint"):  # after stop: its own span, not part of the step
        time.sleep(0.02)
    assert timer.seconds["wait"] >= 0.02 and timer.seconds["checkpoint"] >= 0.02
    assert timer.step_s == step_s < timer.seconds["wait"] + timer.seconds["checkpoint"]


def test_timer_records_a_stage_that_raised():
    timer = StepTimer()
    with pytest.raises(ValueError), timer("train"):
        raise ValueError
    assert "train" in timer.seconds


def test_row_keeps_names_order_and_values():
    timer = StepTimer()
    for stage in ("wait", "train", "publish", "weight_sync"):
        with timer(stage):
            pass
    timer.step_s = 4.0
    learner = {"loss/policy": 0.1, "timing_s/train": 0.7, "reward/mean": 0.5}
    row = step_metrics(
        step=3,
        version=3,
        learner=learner,
        summaries=[_summary(4, 2, 30), _summary(5, 1, 10)],
        timer=timer,
        sync=SyncResult(probe_max_diff=1e-6, load_s=0.25, bytes=4096),
        evaluation={"eval/accuracy": 0.4},
        num_workers=2,
        num_scorers=1,
        gauges={"queue/prompts_depth": 1, "samples/issued": 8, "faults/restarts_rollout": 0},
    )
    # the learner's keys first (timing_s/train where the learner put it), then eval, then ours, then gauges
    gauges = ["queue/prompts_depth", "samples/issued", "faults/restarts_rollout"]
    assert list(row) == ["loss/policy", "timing_s/train", "reward/mean", "eval/accuracy", *CONTROLLER_KEYS, *gauges]
    assert row["timing_s/train"] == timer.seconds["train"] and row["timing_s/train_compute"] == 0.7
    assert row["policy/lag_mean"] == 0.5  # versions 2 and 1 trained into version 3: lags 0 and 1
    assert row["timing_s/generate"] == 2.0 and row["timing_s/reward"] == 1.0  # per worker / per scorer
    assert row["timing_s/step"] == 4.0 and row["perf/tokens_per_s"] == 10.0 and row["perf/samples_per_s"] == 1.0
    assert row["timing_s/publish"] == timer.seconds["publish"] and row["timing_s/load"] == 0.25
    assert row["weight_sync/probe_max_diff"] == 1e-6 and row["weight_sync/bytes"] == 4096


def test_row_of_a_halted_step_has_no_sync_and_no_eval():
    row = halted_step_row([_summary(0, 0, 5)])
    assert "eval/accuracy" not in row and math.isnan(row["timing_s/train_compute"])
    assert row["timing_s/publish"] == 0.0 and row["timing_s/load"] == 0.0
    assert math.isnan(row["weight_sync/probe_max_diff"]) and math.isnan(row["weight_sync/bytes"])
