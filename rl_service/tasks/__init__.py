"""Synthetic verifiable tasks: prompts, answers, held-out sets and verifiers.

`make_task(cfg)` picks the task named by `task.name`: `addition` (single-turn, verified
answer) or `guess_number` (a multi-turn environment, rl_service/envs/).
"""

from rl_service.config import TaskConfig
from rl_service.tasks.addition import AdditionTask, Problem
from rl_service.tasks.guess_number import GuessNumberTask
from rl_service.tasks.stream import PromptStream

TASKS = {"addition": AdditionTask, "guess_number": GuessNumberTask}


def make_task(cfg: TaskConfig) -> AdditionTask | GuessNumberTask:
    return TASKS[cfg.name](cfg)


def is_env_task(task) -> bool:
    """Prompts are environment episodes (multi-turn rollouts; eval = the env's success rate)."""
    return bool(getattr(task, "is_env", False))


__all__ = ["AdditionTask", "GuessNumberTask", "Problem", "PromptStream", "TASKS", "is_env_task", "make_task"]
