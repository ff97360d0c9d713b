"""Two-operand addition: `37+48=` -> `85`. Pure python (no torch), cheap to import.

The pair space (a, b) with 0 <= a, b < 10**digits is split once, with its own seed, into
a fixed held-out set (greedy exact-match accuracy) and the training pairs. Training prompts come
from tasks/stream.py's PromptStream (a seeded permutation of `train_items` per epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rl_service.config import AdditionConfig
from rl_service.types import Prompt

# Above this many pairs we do not enumerate the space; the stream samples instead.
_MAX_ENUMERATED_PAIRS = 1_000_000


@dataclass(frozen=True)
class Problem:
    prompt: str
    """e.g. `37+48=`."""
    answer: str
    """e.g. `85` (no leading zeros, no spaces)."""


def make_problem(a: int, b: int) -> Problem:
    return Problem(prompt=f"{a}+{b}=", answer=str(a + b))


def verify(completion: str, answer: str) -> float:
    """Exact match after stripping whitespace: 1.0 or 0.0."""
    return 1.0 if completion.strip() == answer else 0.0


class AdditionTask:
    """Held-out split + verifier for `a+b=` with operands below 10**digits."""

    def __init__(self, cfg: AdditionConfig):
        self.cfg = cfg
        self.base = 10**cfg.digits
        self.num_pairs = self.base * self.base
        if cfg.num_eval >= self.num_pairs:
            raise ValueError(f"task.num_eval={cfg.num_eval} leaves no training pairs for digits={cfg.digits}")
        # Pairs are encoded as a * base + b so the split is a sample of integers.
        eval_codes = random.Random(cfg.seed).sample(range(self.num_pairs), cfg.num_eval)
        self._eval_codes = frozenset(eval_codes)
        self.eval_problems: list[Problem] = [make_problem(*divmod(c, self.base)) for c in eval_codes]
        self.train_pairs: list[tuple[int, int]] | None = None
        """All non-held-out pairs in order, or None when the space is too big to list."""
        if self.num_pairs <= _MAX_ENUMERATED_PAIRS:
            self.train_pairs = [divmod(c, self.base) for c in range(self.num_pairs) if c not in self._eval_codes]

    @property
    def train_items(self) -> list[tuple[int, int]] | None:
        """What the prompt stream permutes each epoch (None = sample with `sample_train`)."""
        return self.train_pairs

    def make_prompt(self, pair: tuple[int, int], prompt_id: int) -> Prompt:
        p = make_problem(*pair)
        return Prompt(prompt_id=prompt_id, text=p.prompt, metadata={"answer": p.answer})

    @property
    def num_train(self) -> int:
        return self.num_pairs - len(self._eval_codes)

    def is_held_out(self, a: int, b: int) -> bool:
        return a * self.base + b in self._eval_codes

    def sample_train(self, rng: random.Random) -> tuple[int, int]:
        """One uniformly random training pair (rejects held-out pairs)."""
        while True:
            code = rng.randrange(self.num_pairs)
            if code not in self._eval_codes:
                return divmod(code, self.base)

    def corpus(self, limit: int = 20_000) -> list[str]:
        """Full texts `37+48=85` (training pairs only) for tokenizer training."""
        rng = random.Random(self.cfg.seed + 1)
        n = min(limit, self.num_train)
        pairs = (
            rng.sample(self.train_pairs, n)
            if self.train_pairs is not None
            else [self.sample_train(rng) for _ in range(n)]
        )
        return [f"{a}+{b}={a + b}" for a, b in pairs]

    @staticmethod
    def verify(completion: str, answer: str) -> float:
        return verify(completion, answer)
