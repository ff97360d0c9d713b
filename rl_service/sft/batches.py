"""SFT batches: the order examples are trained in, and their tensors.

An example is anything with `prompt_ids` and `response_ids` (token-id tuples; the response
ends with EOS), e.g. rl_service.tasks.dataset.SFTExample. The loss covers response tokens only:
the prompt is context, never a target.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from rl_service.algo.masking import right_pad
from rl_service.learner.batching import epoch_order


class Example(Protocol):
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


def batch_order(num_examples: int, batch_size: int, seed: int) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, indices) of `batch_size` examples: each epoch a seeded permutation of all
    examples, epochs back to back (a batch may straddle two; `epoch` is that of its first row)."""
    if num_examples < 1:
        raise ValueError("no SFT examples")
    epoch, order, pos = 0, epoch_order(num_examples, seed * 1_000_003), 0
    while True:
        start_epoch, batch = epoch, []
        while len(batch) < batch_size:
            if pos == len(order):
                epoch, pos = epoch + 1, 0
                order = epoch_order(num_examples, seed * 1_000_003 + epoch)
            take = min(batch_size - len(batch), len(order) - pos)
            batch += order[pos : pos + take]
            pos += take
        yield start_epoch, batch


def sft_tensors(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt + response rows.

    Returns input_ids [B, T] long, attention_mask [B, T] long, and loss_mask [B, T-1] float on
    the learner's logprob grid (column t = the prediction of token t+1): 1 exactly where token
    t+1 is a response token.
    """
    rows = [tuple(e.prompt_ids) + tuple(e.response_ids) for e in examples]
    ids, attention = right_pad(rows, pad_id)
    loss_mask = torch.zeros(len(rows), max(ids.shape[1] - 1, 0))
    for b, e in enumerate(examples):
        p = len(e.prompt_ids)
        if p == 0 or not e.response_ids:
            raise ValueError(f"SFT example {b} has an empty prompt or response (the first target needs context)")
        loss_mask[b, p - 1 : p - 1 + len(e.response_ids)] = 1.0
    return ids, attention, loss_mask


def response_tokens(examples: Sequence[Example]) -> int:
    """Tokens the loss is averaged over (all response tokens of `examples`)."""
    return sum(len(e.response_ids) for e in examples)


def fit_context(examples: Sequence[Example], max_tokens: int) -> tuple[list[Example], int]:
    """(examples whose prompt + response fit in `max_tokens`, how many did not): a row longer
    than the model's context is dropped and counted, never truncated."""
    kept = [e for e in examples if len(e.prompt_ids) + len(e.response_ids) <= max_tokens]
    return kept, len(examples) - len(kept)
