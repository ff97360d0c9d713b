"""Samples -> padded tensors, and the deterministic splits of a batch into work units.

Pure: torch + rl_service.types only (no ray, vllm, transformers).

Convention: a sequence is `prompt_ids + response_ids`, right-padded with `pad_id` to
T = the longest sequence. Logits at position t predict token t+1, so every per-token
tensor of the learner has T-1 columns and is aligned with `targets = input_ids[:, 1:]`;
`response_mask[b, t] = 1` where `targets[b, t]` is a response token.

Splitting (identical on every process, so collectives line up):
    batch --(epoch permutation)--> num_minibatches minibatches
    minibatch --(contiguous)--> one slice per rank
    rank slice --(micro_batch_size)--> micro-batches (padded with empty ones so every
                                       rank runs the same number of forward/backward calls)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rl_service.types import Sample


def pad_samples(samples: Sequence[Sample], pad_id: int) -> dict[str, Tensor]:
    """Right-pad `prompt_ids + response_ids` of each sample.

    Returns input_ids [B, T] long, attention_mask [B, T] long, response_mask [B, T-1] float
    (1 where target `input_ids[:, t+1]` is a response token).
    """
    if not samples:
        raise ValueError("pad_samples needs at least one sample")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    T = max(lengths)
    if T < 2:
        raise ValueError("every batch needs a sequence of at least 2 tokens (prompt + response)")
    B = len(samples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    response_mask = torch.zeros(B, T - 1, dtype=torch.float32)
    for b, s in enumerate(samples):
        P, R = len(s.prompt_ids), len(s.response_ids)
        if P == 0:
            raise ValueError(f"sample {s.sample_id}: empty prompt (the first response token needs a context)")
        input_ids[b, : P + R] = torch.tensor(tuple(s.prompt_ids) + tuple(s.response_ids), dtype=torch.long)
        attention_mask[b, : P + R] = 1
        # Target index j = t + 1 is a response token for P <= j < P + R.
        response_mask[b, P - 1 : P + R - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def engine_logprobs(samples: Sequence[Sample], T: int) -> Tensor:
    """The engine's logprob of each response token, aligned like response_mask: [B, T-1] fp32 (0 off-response)."""
    out = torch.zeros(len(samples), T - 1, dtype=torch.float32)
    for b, s in enumerate(samples):
        P, R = len(s.prompt_ids), len(s.response_logprobs)
        if R:
            out[b, P - 1 : P + R - 1] = torch.tensor(s.response_logprobs, dtype=torch.float32)
    return out


def split_even(indices: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Contiguous split into `num_chunks` parts whose sizes differ by at most 1 (earlier parts larger).

    split_even(range(5), 2) -> [[0, 1, 2], [3, 4]]; parts may be empty when there are
    fewer indices than chunks.
    """
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1 (got {num_chunks})")
    idx = list(indices)
    base, extra = divmod(len(idx), num_chunks)
    out, start = [], 0
    for i in range(num_chunks):
        size = base + (1 if i < extra else 0)
        out.append(idx[start : start + size])
        start += size
    return out


def epoch_order(num_samples: int, seed: int, shuffle: bool = True) -> list[int]:
    """Sample order for one epoch; a pure function of (num_samples, seed) so every rank agrees."""
    if not shuffle:
        return list(range(num_samples))
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_samples, generator=gen).tolist()


def minibatches(order: Sequence[int], num_minibatches: int) -> list[list[int]]:
    """Split an epoch's order into `num_minibatches` optimizer steps (sizes differ by <= 1)."""
    return split_even(order, num_minibatches)


def rank_slice(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of `indices` (the global minibatch is the union over ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return split_even(indices, world_size)[rank]


def num_micro_batches(num_indices_per_rank: Sequence[int], micro_batch_size: int) -> int:
    """Micro-batches every rank runs: enough for the busiest rank (at least 1)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 (got {micro_batch_size})")
    busiest = max(num_indices_per_rank, default=0)
    return max(1, -(-busiest // micro_batch_size))


def micro_batches(indices: Sequence[int], micro_batch_size: int, count: int) -> list[list[int]]:
    """Chunks of `micro_batch_size`, then empty lists up to `count` (a rank with less work
    still joins every collective). Raises if `indices` need more than `count` chunks."""
    idx = list(indices)
    chunks = [idx[i : i + micro_batch_size] for i in range(0, len(idx), micro_batch_size)]
    if len(chunks) > count:
        raise ValueError(f"{len(idx)} indices need {len(chunks)} micro-batches of {micro_batch_size}, more than {count}")
    return chunks + [[] for _ in range(count - len(chunks))]


def rank_micro_batches(indices: Sequence[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's micro-batches of a global index list; the same count on every rank."""
    per_rank = split_even(indices, world_size)
    count = num_micro_batches([len(p) for p in per_rank], micro_batch_size)
    return micro_batches(per_rank[rank], micro_batch_size, count)


def content_length(attention_mask: Tensor) -> int:
    """Columns a micro-batch needs: its longest sequence (dropping pure right padding).

    attention_mask: [b, T] -> T' in [2, T] (2 for an empty micro-batch).
    """
    return max(2, int(attention_mask.sum(-1).max())) if attention_mask.numel() else 2


def group_runs(prompt_ids: Sequence[int], group_size: int) -> list[list[int]]:
    """Row indices of each prompt's group: consecutive rows sharing a prompt_id, cut at
    `group_size`. Groups can be short when the scorer dropped samples.

    group_runs([7, 7, 9, 9, 9], 2) -> [[0, 1], [2, 3], [4]]
    """
    runs: list[list[int]] = []
    for i, pid in enumerate(prompt_ids):
        if runs and prompt_ids[runs[-1][-1]] == pid and len(runs[-1]) < group_size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
