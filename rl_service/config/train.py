"""`train:` the loop (steps, batch, staleness, queues, checkpoints) and `ray:` how to reach Ray."""

from __future__ import annotations

from pydantic import Field

from rl_service.config.base import Section


class TrainConfig(Section):
    steps: int = Field(20, ge=1)
    """Learner updates (= policy versions published)."""
    prompts_per_step: int = Field(64, ge=1)
    """Prompts per update; the batch holds prompts_per_step * samples_per_prompt samples."""
    max_policy_lag: int = Field(0, ge=0)
    """0 = strictly on-policy; k >= 1 lets generation run k versions ahead of training
    and drops (and counts) samples older than k versions."""
    queue_size: int = Field(8, ge=1)
    """Capacity of each bounded queue, in batches (backpressure)."""
    eval_every: int = Field(0, ge=0)
    """Held-out accuracy every N steps (0 = only at start and end)."""
    timeout_s: float = Field(600.0, gt=0)
    """Give up on a step whose batches have not arrived after this long."""
    checkpoint_every: int = Field(10, ge=0)
    """Write a checkpoint every N steps (0 = only at the end) under <run_dir>/checkpoints/.
    A checkpoint is also written at the end and whenever a guard halts the run. On by default:
    a crashed learner restarts from the last checkpoint, and a killed driver resumes from it
    (`--resume auto`), instead of losing the run."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk; older ones are deleted after a newer one is complete."""
    max_nan_steps: int = Field(3, ge=1)
    """Halt the run (with a checkpoint) after this many optimizer steps in a row were skipped
    for a NaN/inf loss or gradient norm."""
    max_restarts: int = Field(3, ge=0)
    """Component failures survived per run: each rollout worker, reward scorer and queue may be
    replaced this many times (in-flight batches regenerated), and the learner group restarted
    this many times from the last checkpoint, before the run fails naming what died."""


class RayConfig(Section):
    address: str | None = None
    """Attach to this cluster (or $RAY_ADDRESS); None = start an embedded local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of the embedded Ray (None = enough for the requested components)."""
