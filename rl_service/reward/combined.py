"""The whole reward of a run as one object: `reward.fn`, or the weighted sum `reward.fns`.

    reward = build_reward(cfg.reward)                     # raises ValueError on a bad spec
    total, parts = reward.score(prompt, completion, metadata)
    # total = sum(weight * fn(prompt, completion, **metadata, **args)) over the entries;
    # parts = {name: unweighted fn value}; an entry that raises or returns junk raises
    # InvalidReward naming it ("brevity (fns.2) returned nan")
    reward.log_parts                                      # True with fns: log reward/<name>
    reward_config_problem(cfg.reward)                     # the config loader's one-line check

The scorer, the evaluation and `rl-service sft` all score through this, so a run's reward is
the same everywhere. Imports nothing heavy (no torch, no ray): the loader builds one before
Ray starts to check the config, importing the user's modules.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from rl_service.config.reward import RewardConfig
from rl_service.reward.functions import (
    BUILTIN_NAMES,
    MOVED,
    InvalidReward,
    RewardFn,
    checked_reward,
    resolve_reward_fn,
    reward_spec_problem,
)
from rl_service.reward.verifiable import ARG_CHECKS


@dataclass(frozen=True)
class RewardTerm:
    """One resolved entry: fn(prompt, completion, **{**metadata, **args}) * weight."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    """How an InvalidReward names this entry (`brevity (fns.2) `); empty for `reward.fn`."""


class Reward:
    """A run's reward: its terms, summed with their weights per sample."""

    def __init__(self, terms: tuple[RewardTerm, ...], log_parts: bool, timeout_s: float | None = None):
        self.terms = terms
        self.log_parts = log_parts
        """True for `reward.fns`: the per-name parts go to the metrics as reward/<name>."""
        self.timeout_s = timeout_s
        """reward.timeout_s: a call that takes longer is an InvalidReward (None: no limit)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    def score(self, prompt: str, completion: str, metadata: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """(weighted total, {name: unweighted value}) of one sample; InvalidReward names the
        entry that raised or returned something that is not a finite number."""
        parts: dict[str, float] = {}
        total = 0.0
        for term in self.terms:
            kwargs = {**metadata, **term.args} if term.args else metadata
            try:
                value = checked_reward(term.fn, prompt, completion, kwargs, self.timeout_s)
            except InvalidReward as err:
                raise InvalidReward(f"{term.label}{err}") from err.__cause__
            parts[term.name] = value
            total += term.weight * value
        return total, parts


def _args_problem(spec: str, fn: RewardFn, args: dict[str, Any]) -> str | None:
    """Why `args` cannot be passed to `fn`, or None. A built-in takes its keyword-only
    parameters (required ones must be given) with values ARG_CHECKS accepts, and nothing else;
    a user function takes its named parameters, or anything when it has **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature (a C function): take it on trust
        return None
    spec = MOVED.get(spec, spec)
    if spec in BUILTIN_NAMES:
        named = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in args]
        if missing:
            return f"{spec} needs args.{missing[0]}"
    else:
        named = {p.name: p for p in list(params)[2:] if p.kind is not inspect.Parameter.VAR_POSITIONAL}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
    unknown = sorted(set(args) - set(named))
    if unknown:
        takes = ", ".join(n for n, p in named.items() if p.kind is not inspect.Parameter.VAR_KEYWORD) or "none"
        return f"{spec} takes no argument {unknown[0]!r} (it takes: {takes})"
    problem = ARG_CHECKS[spec](args) if spec in ARG_CHECKS else None
    return f"{spec}: {problem}" if problem else None


def reward_config_problem(cfg: RewardConfig) -> str | None:
    """The first reason the reward functions of `cfg` cannot run, as one line naming the key
    (`reward.fn: unknown built-in ...`, `reward.fns.1.args: regex_format needs args.pattern`),
    or None. Imports the user's modules; the fns' names were checked by RewardConfig."""
    if cfg.fns is None:
        problem = reward_spec_problem(cfg.fn)
        return f"reward.fn: {problem}" if problem else None
    for i, entry in enumerate(cfg.fns):
        problem = reward_spec_problem(entry.fn)
        if problem:
            return f"reward.fns.{i}.fn: {problem}"
        problem = _args_problem(entry.fn, resolve_reward_fn(entry.fn), entry.args)
        if problem:
            return f"reward.fns.{i}.args: {problem}"
    return None


def build_reward(cfg: RewardConfig) -> Reward:
    """The Reward of `cfg`: `fns` as given, else `fn` alone (weight 1, no parts logged).
    Raises ValueError with reward_config_problem's line when a function cannot run."""
    problem = reward_config_problem(cfg)
    if problem:
        raise ValueError(problem)
    if cfg.fns is None:
        term = RewardTerm(cfg.fn.rpartition(":")[2], resolve_reward_fn(cfg.fn))
        return Reward((term,), log_parts=False, timeout_s=cfg.timeout_s)
    terms = tuple(
        RewardTerm(e.part_name, resolve_reward_fn(e.fn), e.weight, dict(e.args), f"{e.part_name} (fns.{i}) ")
        for i, e in enumerate(cfg.fns)
    )
    return Reward(terms, log_parts=True, timeout_s=cfg.timeout_s)
