"""Guess-a-number with higher/lower feedback: the example multi-turn environment.

    guess 0-9: 5 higher: 7 lower: 6            <- prompt, then policy/env turns alternating

The secret is drawn from [low, high] by the reset seed. Each turn the policy answers with
a number (its completion, e.g. `5`); the env answers ` higher: ` / ` lower: ` (the secret is
higher / lower than the guess), or ends the episode on a hit. Anything that is not an
integer in range is an invalid guess: it costs the turn and the env answers ` invalid: `.
Reward: `1 - turn_penalty * (turns - 1)` on a hit, 0 otherwise; given on the final step only,
so the episode return is that single number. With max_turns >= ceil(log2(high - low + 2))
binary search always wins; uniform random guessing wins 1 - (1 - 1/N)^max_turns
(N = high - low + 1; 34% for 0-9 in 4 turns): the room RL has to improve.
"""

from __future__ import annotations

import random
from typing import Any

from rl_service.envs.base import StepResult, register

HIGHER, LOWER, INVALID = " higher: ", " lower: ", " invalid: "
CORRECT, OUT_OF_TURNS = " correct", " out of turns"


def parse_guess(completion: str, low: int, high: int) -> int | None:
    """The guessed integer, or None when the completion is not an integer in [low, high]."""
    text = completion.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if low <= value <= high else None


@register("guess_number")
class GuessNumberEnv:
    def __init__(self, low: int = 0, high: int = 9, max_turns: int = 4, turn_penalty: float = 0.0):
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high (got low={low}, high={high})")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 (got {max_turns})")
        self.low, self.high, self.max_turns, self.turn_penalty = low, high, max_turns, turn_penalty
        self.secret: int | None = None
        self.turns = 0

    def prompt(self) -> str:
        return f"guess {self.low}-{self.high}: "

    def reset(self, seed: int) -> str:
        self.secret = random.Random(f"guess_number/{seed}").randint(self.low, self.high)
        self.turns = 0
        return self.prompt()

    def step(self, completion: str) -> StepResult:
        if self.secret is None:
            raise RuntimeError("call reset() before step()")
        if self.turns >= self.max_turns:
            raise RuntimeError("episode is over; call reset()")
        self.turns += 1
        guess = parse_guess(completion, self.low, self.high)
        info: dict[str, Any] = {"turns": self.turns, "valid": guess is not None, "success": guess == self.secret}
        if guess == self.secret:
            return CORRECT, 1.0 - self.turn_penalty * (self.turns - 1), True, False, info
        if self.turns >= self.max_turns:
            return OUT_OF_TURNS, 0.0, False, True, info
        obs = INVALID if guess is None else (HIGHER if self.secret > guess else LOWER)
        return obs, 0.0, False, False, info


def naive_guess(rng: random.Random, low: int, high: int) -> str:
    """The SFT warm start's play: a uniform guess in range, ignoring the feedback."""
    return str(rng.randint(low, high))
