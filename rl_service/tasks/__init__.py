"""Tasks: where prompts, held-out sets and (for the synthetic ones) verifiers come from.

`make_task(cfg)` picks the task named by `task.name`: `addition` (single-turn, verified
answer), `guess_number` (a multi-turn environment, rl_service/envs/) or `dataset` (your own
files, tasks/dataset.py). `prepare_task` also tokenizes a dataset task with the policy's tokenizer.
"""

from rl_service.config import TaskConfig
from rl_service.tasks.addition import AdditionTask, Problem
from rl_service.tasks.dataset import DatasetTask
from rl_service.tasks.guess_number import GuessNumberTask
from rl_service.tasks.stream import PromptStream

TASKS = {"addition": AdditionTask, "guess_number": GuessNumberTask, "dataset": DatasetTask}


def make_task(cfg: TaskConfig) -> AdditionTask | GuessNumberTask | DatasetTask:
    return TASKS[cfg.name](cfg)


def prepare_task(cfg: TaskConfig, model_path: str, max_new_tokens: int):
    """`make_task`, then `bind_task`."""
    return bind_task(make_task(cfg), model_path, max_new_tokens)


def bind_task(task, model_path: str, max_new_tokens: int):
    """A dataset task tokenized with the tokenizer of `model_path` (prompts that leave no room for
    `max_new_tokens` in the model's context are dropped and counted); other tasks as they are."""
    if isinstance(task, DatasetTask):
        from transformers import AutoTokenizer

        from rl_service.models.hf_config import context_length

        room = context_length(model_path) - max_new_tokens
        task.bind(AutoTokenizer.from_pretrained(model_path), max_prompt_tokens=max(room, 1))
    return task


__all__ = [
    "AdditionTask",
    "DatasetTask",
    "GuessNumberTask",
    "Problem",
    "PromptStream",
    "TASKS",
    "is_env_task",
    "bind_task",
    "make_task",
    "prepare_task",
]
