"""The text-environment API: gymnasium's reset/step, with strings for observations and actions.

    env = make_env("guess_number", low=0, high=9, max_turns=4)
    obs = env.reset(seed=7)                      # the first prompt, e.g. "guess 0-9: "
    obs, reward, terminated, truncated, info = env.step("5")   # the policy's completion text

An episode ends when `terminated` (the task reached a terminal state: solved, failed) or
`truncated` (a limit cut it short: max turns). The rollout worker adds a token budget of its
own (`envs/episodes.py`). Environments are plain classes satisfying `TextEnv` (a Protocol,
no base class) and are registered by name so a prompt can name the env it was drawn from
(`Prompt.metadata["env"]`) and any worker can rebuild it. Pure python: no torch, ray, vllm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

StepResult = tuple[str, float, bool, bool, dict[str, Any]]
"""(observation, reward, terminated, truncated, info), as in gymnasium."""

# Keys of Prompt.metadata that describe an environment episode (JSON-serialisable, so a
# checkpoint can store in-flight prompts): the env's registered name, its reset seed and
# its constructor kwargs.
ENV_KEY, ENV_SEED_KEY, ENV_KWARGS_KEY = "env", "env_seed", "env_kwargs"


class TextEnv(Protocol):
    def reset(self, seed: int) -> str:
        """Start a new episode (fully determined by `seed`); returns the first observation,
        which is the episode's prompt."""
        ...

    def step(self, completion: str) -> StepResult:
        """Apply one policy turn (decoded completion, special tokens skipped). The returned
        observation is what the policy sees next (appended to its context as tokens)."""
        ...


ENVS: dict[str, Callable[..., TextEnv]] = {}
"""Registered environment constructors by name."""


def register(name: str) -> Callable[[Callable[..., TextEnv]], Callable[..., TextEnv]]:
    def add(ctor: Callable[..., TextEnv]) -> Callable[..., TextEnv]:
        ENVS[name] = ctor
        return ctor

    return add


def make_env(name: str, **kwargs: Any) -> TextEnv:
    if name not in ENVS:
        raise KeyError(f"unknown environment {name!r} (known: {', '.join(sorted(ENVS))})")
    return ENVS[name](**kwargs)


def env_from_metadata(metadata: dict[str, Any]) -> tuple[TextEnv, int]:
    """(fresh env, reset seed) for a prompt drawn from an environment."""
    return make_env(metadata[ENV_KEY], **metadata.get(ENV_KWARGS_KEY, {})), int(metadata[ENV_SEED_KEY])


def is_env_prompt(metadata: dict[str, Any]) -> bool:
    return ENV_KEY in metadata
