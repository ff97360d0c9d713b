"""Reward function for environment tasks: the episode return, recorded by the rollout worker.

Use as `reward.fn: rl_service.envs.rewards:env_return`. The worker stores the return in the
sample's metadata (`env_return`), which the scorer passes as keyword arguments; a sample
without it (not an env episode) raises, so the scorer drops it instead of scoring it 0.
"""

from __future__ import annotations

from typing import Any


def env_return(prompt: str, completion: str, env_return: float | None = None, **_: Any) -> float:
    """Sum of the environment's rewards over the episode."""
    if env_return is None:
        raise ValueError("sample has no env_return: reward.fn env_return needs an environment task")
    return float(env_return)
