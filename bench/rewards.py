"""Rewards of e2e_trl's long and shared shapes (bench/shapes.py), used by both systems.

rl_service loads them as user functions (`reward.fn: <path>/bench/rewards.py:<name>`); the TRL
side calls them through rl_service's `build_reward` of the same config. Both give a spread of
values inside a group, so GRPO advantages are non-zero and the learner has work to do.
"""

from __future__ import annotations


def digit_share(prompt: str, completion: str, **_) -> float:
    """Share of the completion's characters that are digits (0.0 for an empty completion)."""
    return sum(c.isdigit() for c in completion) / len(completion) if completion else 0.0


def addition_graded(prompt: str, completion: str, answer: str, **_) -> float:
    """1.0 for the exact answer (whitespace stripped); else 0.5 x the share of the answer's
    digits found in place at the start of the completion."""
    got = completion.strip()
    if got == answer:
        return 1.0
    in_place = sum(1 for a, b in zip(answer, got) if a == b)
    return 0.5 * in_place / len(answer)
