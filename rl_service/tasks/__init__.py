"""Synthetic verifiable tasks: prompts, answers, held-out sets and verifiers."""

from rl_service.tasks.addition import AdditionTask, Problem, PromptStream

__all__ = ["AdditionTask", "Problem", "PromptStream"]
