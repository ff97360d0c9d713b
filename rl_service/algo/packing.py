"""Sequence packing: a micro-batch's samples concatenated into one row, no padding.

Pure torch. A packed row holds samples of lengths l_0, l_1, ... back to back; sample i occupies
columns [s_i, s_i + l_i) with s_i = l_0 + ... + l_{i-1}, and its position ids restart at 0
(0..l_i-1), which is what keeps attention inside a sample: transformers (5.x) turns position-id
resets into a block-diagonal causal mask when no 2-D attention mask and no cache are given
(masking_utils.find_packed_sequence_indices; the learner checks at setup that the model does).

Grids: the learner's per-token tensors are [b, T-1], entry t of row i = the prediction of
token t+1 of sample i from tokens <= t. In a packed row's shifted outputs ([L-1]: position j
predicts token j+1 of the row) that entry sits at j = s_i + t, for t < l_i - 1; the positions
j = s_i + l_i - 1 predict the NEXT sample's first token across a boundary and are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pack_by_tokens(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Bins of positions into `lengths`, each bin's total length <= max_tokens (a sample longer
    than that gets a bin of its own). First-fit decreasing: longest first, each into the first
    bin it fits, ties in index order, so the plan is a pure function of its arguments.
    Each bin lists its positions in increasing order.

    pack_by_tokens([3, 5, 2, 4], 7) -> [[1, 2], [0, 3]]
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_tokens - lengths[i])
    return [sorted(b) for b in bins]


def packed_position_ids(lengths: Sequence[int] | Tensor) -> Tensor:
    """Position ids of a packed row: 0..l_i-1 for each sample in turn. lengths: [b] -> [L] long."""
    lens = torch.as_tensor(lengths, dtype=torch.long)
    if lens.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    starts = torch.cumsum(lens, 0) - lens
    return torch.arange(int(lens.sum()), dtype=torch.long) - torch.repeat_interleave(starts, lens)


def pack_rows(input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded rows -> one packed row. input_ids: [b, T]; lengths: [b] (real tokens of each
    row, >= 1) -> (ids [1, L], position_ids [1, L]) with L = lengths.sum(), on input_ids' device."""
    keep = torch.arange(input_ids.shape[1], device=input_ids.device)[None] < lengths.to(input_ids.device)[:, None]
    ids = input_ids[keep][None]  # row-major: sample 0's tokens, then sample 1's...
    return ids, packed_position_ids(lengths.cpu()).to(input_ids.device)[None]


def unpack_to_grid(packed: Tensor, lengths: Tensor, T: int) -> Tensor:
    """A packed row's shifted per-position outputs back on the [b, T-1] grid (0 past each sample).

    packed: [L'] (L' >= L - 1; entry j = the output at row position j, e.g. the logprob of row
    token j+1); lengths: [b] -> [b, T-1]: out[i, t] = packed[s_i + t] for t < lengths[i] - 1.
    """
    lens = lengths.to(packed.device).long()
    starts = torch.cumsum(lens, 0) - lens
    t = torch.arange(T - 1, device=packed.device)
    valid = t[None] < (lens - 1)[:, None]  # [b, T-1]
    if packed.numel() == 0:  # only samples of one token: nothing is predicted
        return packed.new_zeros(valid.shape)
    index = torch.where(valid, starts[:, None] + t[None], torch.zeros_like(t)[None])  # a valid dummy index
    zero = torch.zeros((), dtype=packed.dtype, device=packed.device)
    return torch.where(valid, packed[index], zero)


def token_slots(micro_batches: Sequence[Sequence[int]], lengths: Sequence[int], packed: bool) -> tuple[int, int]:
    """(real tokens, token slots the forwards compute) over micro-batches of sample positions:
    a padded micro-batch computes rows x its longest sample, a packed one its total length."""
    real = slots = 0
    for mb in micro_batches:
        lens = [lengths[i] for i in mb]
        real += sum(lens)
        slots += sum(lens) if packed else len(lens) * max(lens, default=0)
    return real, slots
