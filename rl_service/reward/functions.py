"""Reward functions: built-in verifiers by name, or user code as `module:fn` / `file.py:fn`.

The built-ins for verifiable data (exact_match, numeric_match, math_verify, regex_format)
live in verifiable.py; combined.py turns a RewardConfig (`reward.fn` or `reward.fns`) into
the one Reward object the scorer and the evaluation call.

A reward function has the signature ``fn(prompt: str, completion: str, **metadata) -> float``;
`metadata` is the prompt's task data (e.g. ``answer``). This module imports nothing heavy
so the config can check a reward spec before Ray starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rl_service.reward.verifiable import VERIFIABLE

RewardFn = Callable[..., float]


def addition_exact(prompt: str, completion: str, answer: str = "", **_: Any) -> float:
    """1.0 when the completion is exactly the sum (surrounding whitespace ignored), else 0.0."""
    return 1.0 if completion.strip() == str(answer) else 0.0


def zero(prompt: str, completion: str, **_: Any) -> float:
    """0.0 for everything: on-policy distillation alone (reward.teacher gives the only signal)."""
    return 0.0


def env_return(prompt: str, completion: str, env_return: float | None = None, **_: Any) -> float:
    """Environment tasks: the episode's return, which the rollout worker stored in the sample's
    metadata. A sample without it (not an env episode) raises, so the scorer drops it instead of
    scoring it 0."""
    if env_return is None:
        raise ValueError("sample has no env_return: reward.fn env_return needs an environment task")
    return float(env_return)


BUILTINS: dict[str, RewardFn] = {
    "addition_exact": addition_exact,
    "zero": zero,
    "env_return": env_return,
    **VERIFIABLE,  # exact_match, numeric_match, math_verify, regex_format
}
BUILTIN_NAMES = frozenset(BUILTINS)
# Specs written before a function moved into this module, and the built-in each one is now.
MOVED = {"rl_service.envs.rewards:env_return": "env_return"}


def load_user_fn(spec: str) -> RewardFn:
    """Resolve `package.module:fn` or `path/to/file.py:fn` to a callable."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ValueError(f"expected module:fn or path/to/file.py:fn, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{target} does not exist")
        mod_name = f"rl_service_user_reward_{abs(hash(str(path)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
            sys.modules[mod_name] = module
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{target} has no callable {name!r}")
    return fn


def resolve_reward_fn(spec: str) -> RewardFn:
    spec = MOVED.get(spec, spec)
    return BUILTINS[spec] if spec in BUILTINS else load_user_fn(spec)


def reward_spec_problem(spec: str) -> str | None:
    """Why `spec` (a built-in name, `module:fn` or `file.py:fn`) cannot be used, or None.
    Imports the user's module: the config loader calls this before Ray starts."""
    spec = MOVED.get(spec, spec)
    if ":" not in spec:
        if spec in BUILTIN_NAMES:
            return None
        known = ", ".join(sorted(BUILTIN_NAMES))
        return f"unknown built-in {spec!r} (known: {known}; or give module:fn / path/to/file.py:fn)"
    try:
        load_user_fn(spec)
    except Exception as err:  # noqa: BLE001 - any import problem is a config problem
        return f"cannot load {spec!r}: {type(err).__name__}: {err}"
    return None


class InvalidReward(ValueError):
    """The reward function raised or returned something that is not a finite number."""


def checked_reward(
    fn: RewardFn, prompt: str, completion: str, metadata: dict[str, Any], timeout_s: float | None = None
) -> float:
    """Call `fn` and insist on a finite real number within `timeout_s` (None: wait for ever);
    anything else -- it raised, hung, or returned what is not one number (a bool, a string, a
    2-element tensor, NaN) -- raises InvalidReward."""
    value = (
        _call(fn, prompt, completion, metadata)
        if timeout_s is None
        else _call_within(timeout_s, fn, prompt, completion, metadata)
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise InvalidReward(f"returned {type(value).__name__} {_short(value)}, not a number")
    try:
        value = float(value)  # a 1-element tensor / numpy scalar converts; a 2-element one raises
    except Exception as err:  # noqa: BLE001 - whatever __float__ of user data raises
        raise InvalidReward(f"returned {type(value).__name__} {_short(value)}, not one number ({err})") from err
    if not math.isfinite(value):
        raise InvalidReward(f"returned {value}")
    return value


def _call(fn: RewardFn, prompt: str, completion: str, metadata: dict[str, Any]) -> Any:
    try:
        return fn(prompt, completion, **metadata)
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise InvalidReward(f"raised {type(err).__name__}: {err}") from err


def _call_within(timeout_s: float, fn: RewardFn, prompt: str, completion: str, metadata: dict[str, Any]) -> Any:
    """The call on its own daemon thread: after `timeout_s` it is given up on (a Python call
    cannot be killed; a hung one keeps its thread, asleep or spinning, until it returns)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = _call(fn, prompt, completion, metadata)
        except InvalidReward as err:
            box["error"] = err

    worker = threading.Thread(target=run, name="reward-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise InvalidReward(f"did not return within reward.timeout_s={timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
