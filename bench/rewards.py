"""The reward of e2e_trl's long and shared shapes (bench/shapes.py), used by both systems.

rl_service loads it as a user function (`reward.fn: <path>/bench/rewards.py:<name>`); the TRL
side calls it through rl_service's `build_reward` of the same config. It gives a spread of
values inside a group, so GRPO advantages are non-zero and the learner has work to do.
"""

from __future__ import annotations


def digit_share(prompt: str, completion: str, **_) -> float:
    """Share of the completion's characters that are digits (0.0 for an empty completion)."""
    return sum(c.isdigit() for c in completion) / len(completion) if completion else 0.0
