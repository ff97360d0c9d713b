"""`task:` the prompts, the held-out set and the built-in verifier; one variant per task `name`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rl_service.config.base import Section


class _TaskCommon(Section):
    num_eval: int = Field(200, ge=1)
    """Size of the fixed held-out set: greedy exact-match accuracy (addition) or greedy
    episode success rate (guess_number)."""
    seed: int = 1234
    """Seed of the train/held-out split (independent of the run seed)."""


class AdditionConfig(_TaskCommon):
    """Single-turn verifiable task: prompt `37+48=`, answer `85`, built-in verifier."""

    name: Literal["addition"] = "addition"
    """`addition`: single-turn verifiable task (prompts, answers, built-in verifier)."""
    digits: int = Field(2, ge=1, le=6)
    """Operands have up to this many digits (prompt `37+48=`, answer `85`)."""


class GuessNumberConfig(_TaskCommon):
    """Multi-turn environment (rl_service/envs/): guess a secret number from higher/lower hints.
    Use it with reward.fn = env_return (built-in)."""

    name: Literal["guess_number"] = "guess_number"
    """`guess_number`: multi-turn environment (rl_service/envs/)."""
    guess_low: int = Field(0, ge=0)
    """Smallest possible secret."""
    guess_high: int = Field(9, ge=1, le=999)
    """Largest possible secret."""
    max_turns: int = Field(4, ge=1, le=16)
    """Guesses per episode before it is truncated."""
    turn_penalty: float = Field(0.0, ge=0, le=1)
    """A hit on turn k is worth 1 - turn_penalty * (k - 1)."""

    @model_validator(mode="after")
    def _guess_range(self) -> GuessNumberConfig:
        if self.guess_low >= self.guess_high:
            raise ValueError(f"task.guess_low ({self.guess_low}) must be < task.guess_high ({self.guess_high})")
        return self


TaskConfig = Annotated[AdditionConfig | GuessNumberConfig, Field(discriminator="name")]
"""The task variant named by `task.name` (default `addition`)."""


def default_task_name(data: Any) -> Any:
    """`task:` without a name is the addition task (as before variants had types)."""
    if isinstance(data, dict) and isinstance(data.get("task"), dict) and "name" not in data["task"]:
        data = {**data, "task": {"name": "addition", **data["task"]}}
    return data
