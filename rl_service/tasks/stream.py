"""The training prompt stream: deterministic, resumable, shared by every task.

It works for any task with `train_items` (a list, or None when the item space is too big to
enumerate), `sample_train(rng)` and `make_prompt(item, prompt_id)`. Epoch e is a permutation
of the training items seeded by (seed, e), so a resumed run sees the very same prompts.
"""

from __future__ import annotations

import random

from rl_service.types import Prompt

# Pseudo-epoch length when the item space is too big to enumerate (the stream samples instead).
_SAMPLED_EPOCH_LEN = 100_000


class PromptStream:
    """Deterministic, resumable, infinite stream of training prompts.

    Epoch e is a permutation of the training pairs seeded by (seed, e); prompt ids are a
    global counter. `state_dict()` / `load_state_dict()` capture the exact position.
    """

    def __init__(self, task, seed: int):
        self.task = task
        self.seed = seed
        self.epoch = 0
        self.index = 0
        self.next_id = 0
        self._order_epoch = -1
        self._order: list[tuple[int, int]] = []

    @property
    def position(self) -> int:
        """Number of prompts handed out so far (= the next prompt id)."""
        return self.next_id

    @property
    def epoch_len(self) -> int:
        return len(self.task.train_items) if self.task.train_items is not None else _SAMPLED_EPOCH_LEN

    def _epoch_order(self) -> list:
        if self._order_epoch != self.epoch:
            # A string seed hashes deterministically (sha512), independent of PYTHONHASHSEED.
            rng = random.Random(f"prompt-stream/{self.seed}/{self.epoch}")
            if self.task.train_items is not None:
                self._order = list(self.task.train_items)
                rng.shuffle(self._order)
            else:
                self._order = [self.task.sample_train(rng) for _ in range(_SAMPLED_EPOCH_LEN)]
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self, n: int) -> list[Prompt]:
        out: list[Prompt] = []
        for _ in range(n):
            if self.index >= self.epoch_len:
                self.epoch, self.index = self.epoch + 1, 0
            out.append(self.task.make_prompt(self._epoch_order()[self.index], self.next_id))
            self.index += 1
            self.next_id += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "next_id": self.next_id}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self.next_id = int(state["epoch"]), int(state["index"]), int(state["next_id"])
