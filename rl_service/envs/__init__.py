"""Text environments (gymnasium-style reset/step on strings) and multi-turn rollouts.

See docs/environments.md. Importing this package imports no torch, ray or vllm.
"""

from rl_service.envs.base import (
    ENV_KEY,
    ENV_KWARGS_KEY,
    ENV_SEED_KEY,
    ENVS,
    StepResult,
    TextEnv,
    env_from_metadata,
    is_env_prompt,
    make_env,
    register,
)
from rl_service.envs.episodes import Episode, run_episodes
from rl_service.envs.guess_number import GuessNumberEnv

__all__ = [
    "ENVS",
    "ENV_KEY",
    "ENV_KWARGS_KEY",
    "ENV_SEED_KEY",
    "Episode",
    "GuessNumberEnv",
    "StepResult",
    "TextEnv",
    "env_from_metadata",
    "is_env_prompt",
    "make_env",
    "register",
    "run_episodes",
]
