"""`reward:` the reward scorers and where rewards come from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rl_service.config.base import Resources, Section


class RewardConfig(Section):
    fn: str = "addition_exact"
    """Built-in verifier by name, or a user function as `module:fn` or `path/to/file.py:fn`
    with signature fn(prompt: str, completion: str, **metadata) -> float."""
    num_scorers: int = Field(1, ge=1)
    """Reward scorer replicas."""
    resources: Resources = Resources(num_cpus=0.5)
    """Resources per scorer."""
    on_error: Literal["fail", "drop"] = "drop"
    """When the function raises or returns NaN/inf/non-number: fail the run, or drop the
    sample and count it (`samples/dropped_invalid`). Never scored 0 silently."""
    model: str | None = None
    """A reward model directory written by `rl-service train-rm` (an HF 1-output sequence
    classifier): the reward of a sample is its score of `prompt + completion`, one batched
    forward per batch on the scorer's CPU. Replaces `fn` (setting both is an error)."""
    teacher: str | None = None
    """On-policy distillation: a causal-LM directory sharing the policy's tokenizer. Every
    generated token gets the per-token reward teacher_coef * (teacher logprob - student
    logprob), added to the scalar reward (use fn `zero` for distillation alone)."""
    teacher_coef: float = Field(1.0, gt=0)
    """Weight of the teacher's per-token reward."""

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if self.model is not None and self.fn != "addition_exact":
            raise ValueError(
                f"model and a custom fn ({self.fn!r}) are mutually exclusive: the reward model replaces the function"
            )
        for key in ("model", "teacher"):
            d = getattr(self, key)
            if d is not None and not (Path(d) / "config.json").is_file():
                hint = " (train one: rl-service train-rm configs/rm.yaml)" if key == "model" else ""
                raise ValueError(f"{key}: {d!r} is not an HF model directory (no config.json){hint}")
        return self
