"""One training step's timings and metrics.

    timer = StepTimer()                  started when the step starts
    with timer("train"): ...             `timing_s/train` = the seconds inside the block
    step_metrics(...)                    the row metrics.jsonl gets for the step

The row is the learner's own metrics (loss, KL, rewards...), then `reward/<name>` per
`reward.fns` entry (its mean over the step's kept samples, unweighted), then `eval/accuracy` when
the step evaluated, then what the controller saw: timings, throughput, policy lag, queue depths, the
sample ledger's books and the fault counters. Where a name is in both, the controller's value
wins and the learner's compute time moves to `timing_s/train_compute`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rl_service.types import BatchSummary


class StepTimer:
    """Seconds per named stage of one step, and of the step itself (start to `stop()`)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.step_s: float | None = None

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - start

    def stop(self) -> float:
        """End the step's own time (`timing_s/step`); stages may still be timed after it."""
        self.step_s = time.perf_counter() - self.t0
        return self.step_s


@dataclass
class SyncResult:
    """What the weight sync of a step measured (the defaults: no sync, the run halted)."""

    probe_max_diff: float = float("nan")
    """Largest |logprob difference| on the probe sequences, learner vs the slowest worker."""
    load_s: float = 0.0
    """The slowest worker's checksum + load + probe."""
    bytes: float = float("nan")
    """Tensor bytes each worker received (the full weights, or LoRA adapters only)."""


def reward_part_means(summaries: list[BatchSummary]) -> dict[str, float]:
    """`reward/<name>`: each reward.fns entry's mean over the step's kept samples (0.0 when none
    were kept, like reward/mean); {} under reward.fn (its batches carry no parts)."""
    if all(s.reward_part_sums is None for s in summaries):
        return {}
    n = sum(len(s.sample_ids) for s in summaries)
    sums: dict[str, float] = {}
    for s in summaries:
        for name, total in (s.reward_part_sums or {}).items():
            sums[name] = sums.get(name, 0.0) + total
    return {f"reward/{name}": total / n if n else 0.0 for name, total in sums.items()}


def step_metrics(
    *,
    step: int,
    version: int,
    learner: dict,
    summaries: list[BatchSummary],
    timer: StepTimer,
    sync: SyncResult,
    evaluation: dict[str, float] | None,
    num_workers: int,
    num_scorers: int,
    gauges: dict,
) -> dict:
    """The metrics row of `step` (1-based), trained into policy `version`.

    learner: the learner's train_step metrics; summaries: the step's batches; evaluation: the
    held-out metrics (`eval/accuracy`, ...) if this step evaluated; gauges: queue depths, ledger and fault counters,
    read now. `timing_s/step` (and throughput) is the timer's start to its `stop()`."""
    step_s = timer.step_s if timer.step_s is not None else timer.stop()
    lag = sum(version - 1 - s.policy_version for s in summaries) / len(summaries)
    return {
        **learner,
        **reward_part_means(summaries),
        **(evaluation or {}),
        "step": step,
        "policy_version": version,
        "policy/lag_mean": lag,
        "timing_s/generate": sum(s.generate_s for s in summaries) / num_workers,
        "timing_s/reward": sum(s.reward_s for s in summaries) / num_scorers,
        "timing_s/wait": timer.seconds["wait"],
        "timing_s/train": timer.seconds["train"],
        # the learner's own compute time; timing_s/train adds Ray dispatch and batch transfer
        "timing_s/train_compute": learner.get("timing_s/train", float("nan")),
        "timing_s/weight_sync": timer.seconds["weight_sync"],
        "timing_s/step": step_s,
        "timing_s/publish": timer.seconds.get("publish", 0.0),
        "timing_s/load": sync.load_s,
        "weight_sync/probe_max_diff": sync.probe_max_diff,
        "weight_sync/bytes": sync.bytes,
        # rollout.weight_sync=collective: waiting for the previous sync's swap before training
        **({"timing_s/weight_settle": timer.seconds["settle"]} if "settle" in timer.seconds else {}),
        "perf/tokens_per_s": sum(s.num_response_tokens for s in summaries) / step_s,
        "perf/samples_per_s": sum(len(s.sample_ids) for s in summaries) / step_s,
        **gauges,
    }
