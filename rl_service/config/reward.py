"""`reward:` the reward scorers and where rewards come from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rl_service.config.base import Resources, Section

DEFAULT_FN = "addition_exact"
# The reward/* metrics the learner already writes (algo/advantages.py, learner/prepare.py,
# algo/preference.py): a reward.fns entry named like one would overwrite it in metrics.jsonl.
RESERVED_PART_NAMES = frozenset({"mean", "std", "frac_zero_std", "token_mean", "token_seq_mean"} | {
    "margin", "chosen", "rejected"})  # fmt: skip
_PART_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class RewardTermConfig(Section):
    """One entry of `reward.fns`: a reward function, its weight in the sum, its metric name."""

    fn: str
    """Built-in name (exact_match, numeric_match, math_verify, regex_format, addition_exact,
    env_return, zero) or a user function `module:fn` / `path/to/file.py:fn`."""
    weight: float = Field(1.0, allow_inf_nan=False)
    """Its weight in the sample's reward, sum(weight * fn(...)) (negative for a penalty)."""
    name: str | None = None
    """Logged as `reward/<name>` (the mean over the step's samples, unweighted); default the
    function's own name (`length_penalty` for `my_rewards.py:length_penalty`)."""
    args: dict[str, Any] = {}
    """Keyword arguments for the function, on top of the row's fields (these win): e.g.
    {pattern: "<answer>.*</answer>"} for regex_format, {answer_key: solution, tolerance: 1e-3}
    for numeric_match. A built-in takes only its documented parameters (docs/rewards.md)."""

    @property
    def part_name(self) -> str:
        return self.name if self.name is not None else self.fn.rpartition(":")[2]


class RewardConfig(Section):
    fn: str = DEFAULT_FN
    """Built-in verifier by name, or a user function as `module:fn` or `path/to/file.py:fn`
    with signature fn(prompt: str, completion: str, **metadata) -> float (metadata: the other
    fields of the prompt's data row, e.g. `answer`). One function, weight 1; see `fns`."""
    fns: list[RewardTermConfig] | None = Field(None, min_length=1)
    """A weighted sum of reward functions instead of `fn`, e.g. format + correctness:
    [{fn: regex_format, weight: 0.2, args: {pattern: "..."}}, {fn: math_verify}]. Each is
    logged as `reward/<name>`. Not with a custom `fn`, nor with `model`."""
    num_scorers: int = Field(1, ge=1)
    """Reward scorer replicas."""
    resources: Resources = Resources(num_cpus=0.5)
    """Resources per scorer."""
    on_error: Literal["fail", "drop"] = "drop"
    """When the function raises, hangs past `timeout_s` or returns anything but one finite
    number: fail the run, or drop the sample and count it (`samples/dropped_invalid`). Never
    scored 0 silently."""
    timeout_s: float | None = Field(30.0, gt=0)
    """Per call of a reward function: a call still running after this is treated as an invalid
    reward (per `on_error`), so one hung verifier cannot stall the run. The call is given up on,
    not killed (its thread runs on until it returns). None: no limit."""
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
        if self.fns is not None:
            self._check_fns()
        if self.model is not None and self.fn != DEFAULT_FN:
            raise ValueError(
                f"model and a custom fn ({self.fn!r}) are mutually exclusive: the reward model replaces the function"
            )
        for key in ("model", "teacher"):
            d = getattr(self, key)
            if d is not None and not (Path(d) / "config.json").is_file():
                hint = " (train one: rl-service train-rm configs/rm.yaml)" if key == "model" else ""
                raise ValueError(f"{key}: {d!r} is not an HF model directory (no config.json){hint}")
        return self

    def _check_fns(self) -> None:
        if self.fn != DEFAULT_FN:
            raise ValueError(f"fns: give either fn ({self.fn!r}) or fns, not both (put it in fns as one entry)")
        if self.model is not None:
            raise ValueError("fns: a reward model (model) replaces the reward functions; give one or the other")
        seen: set[str] = set()
        for i, term in enumerate(self.fns or []):
            name = term.part_name
            if not _PART_NAME.fullmatch(name):
                raise ValueError(f"fns.{i}.name: {name!r} must be letters, digits, _ . - (it is a metric name)")
            if name in RESERVED_PART_NAMES:
                raise ValueError(f"fns.{i}.name: reward/{name} is already a metric; name this entry otherwise")
            if name in seen:
                raise ValueError(f"fns.{i}.name: {name!r} is used twice; give each entry its own name")
            seen.add(name)
