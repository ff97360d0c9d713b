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


class DatasetConfig(Section):
    """Your own data: one row per prompt in local JSONL / Parquet / CSV files (docs/data.md).

    Every field of a row other than the prompt reaches the reward function as a keyword
    argument (`fn(prompt, completion, answer=..., **metadata)`), on training and eval prompts alike.
    """

    name: Literal["dataset"] = "dataset"
    """`dataset`: prompts read from `train` / `eval` files."""
    train: str
    """Training rows: a `.jsonl`/`.json`, `.parquet` or `.csv` file (read with HF `datasets`)."""
    eval: str | None = None
    """Held-out rows (same format). None = hold out `num_eval` rows of `train` (seeded by `seed`)."""
    num_eval: int | None = Field(None, ge=1)
    """Use at most this many eval rows (the first ones; None = all). Required when `eval` is None."""
    seed: int = 1234
    """Seed of the held-out split when `eval` is None (independent of the run seed)."""
    prompt_key: str = "prompt"
    """Column holding the prompt as a string."""
    messages_key: str = "messages"
    """Column holding the prompt as an OpenAI-style list of `{role, content}` (used when the row
    has no `prompt_key`). A trailing assistant turn is the row's response (SFT target), not prompt."""
    response_key: str = "response"
    """Column holding the SFT target for a string prompt (`rl-service sft`)."""
    chat_template: bool | None = None
    """Render string prompts with the tokenizer's chat template (as one user turn) too.
    None = only messages are (they always are, with the generation prompt)."""
    max_prompt_tokens: int | None = Field(None, ge=1)
    """Drop (and count) rows whose prompt is longer than this many tokens; never truncated.
    Rows that leave no room for rollout.max_new_tokens in the model's context are dropped too."""
    reference_key: str | None = None
    """Column holding an eval row's reference text, for `eval.metrics` rouge_l / bleu / perplexity.
    None = the row's response (`response_key`, or a trailing assistant turn of its messages)."""
    success_threshold: float = 1.0
    """An eval completion counts as solved when its reward is >= this (`eval/accuracy`)."""
    eval_samples: int = Field(1, ge=1, le=64)
    """k > 1: also sample k completions per eval prompt (rollout.temperature) for `eval/pass@k`."""

    @model_validator(mode="after")
    def _eval_source(self) -> DatasetConfig:
        if self.eval is None and self.num_eval is None:
            raise ValueError("task.eval: give an eval file, or task.num_eval rows to hold out of task.train")
        return self


TaskConfig = Annotated[AdditionConfig | GuessNumberConfig | DatasetConfig, Field(discriminator="name")]
"""The task variant named by `task.name` (default `addition`)."""


def default_task_name(data: Any) -> Any:
    """`task:` without a name is the addition task (as before variants had types)."""
    if isinstance(data, dict) and isinstance(data.get("task"), dict) and "name" not in data["task"]:
        data = {**data, "task": {"name": "addition", **data["task"]}}
    return data
