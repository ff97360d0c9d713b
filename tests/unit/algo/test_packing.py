"""rl_service.algo.packing against plain loops: the token-budget bins, position ids, packing
right-padded rows into one row and unpacking its shifted outputs onto the [b, T-1] grid."""

from __future__ import annotations

import random

import pytest
import torch

from rl_service.algo.packing import pack_by_tokens, pack_rows, packed_position_ids, token_slots, unpack_to_grid


@pytest.mark.parametrize("seed", range(6))
def test_pack_by_tokens_covers_every_sample_once_within_the_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(0, 30))]
    budget = rng.choice([8, 30, 64, 1000])
    bins = pack_by_tokens(lengths, budget)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert b == sorted(b) and b
        assert sum(lengths[i] for i in b) <= budget or len(b) == 1  # an oversize sample runs alone
    # First fit: a sample went to a later bin only because it did not fit the earlier ones, so
    # no two bins fit together (else the later bin's items would have gone to the earlier one).
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(loads[i] + loads[j] > budget for i in range(len(bins)) for j in range(i + 1, len(bins)))
    assert pack_by_tokens(lengths, budget) == bins  # a pure function of its arguments


def test_pack_by_tokens_examples_and_errors():
    assert pack_by_tokens([3, 5, 2, 4], 7) == [[1, 2], [0, 3]]
    assert pack_by_tokens([9, 1], 4) == [[0], [1]]
    assert pack_by_tokens([], 4) == []
    with pytest.raises(ValueError, match="max_tokens"):
        pack_by_tokens([1], 0)


def test_position_ids_restart_at_every_sample():
    lengths = [3, 1, 4]
    want = [t for n in lengths for t in range(n)]
    assert packed_position_ids(lengths).tolist() == want == [0, 1, 2, 0, 0, 1, 2, 3]
    assert packed_position_ids([]).tolist() == []


def _padded(rows, T, pad=0):
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


def test_pack_rows_concatenates_the_real_tokens():
    rows = [[5, 6, 7], [8], [9, 10, 11, 12]]
    ids, lengths = _padded(rows, 6, pad=99)
    packed, pos = pack_rows(ids, lengths)
    assert packed.tolist() == [[t for r in rows for t in r]]
    assert pos.tolist() == [packed_position_ids(lengths).tolist()]


@pytest.mark.parametrize("seed", range(4))
def test_unpack_to_grid_matches_a_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (5,), generator=gen)
    T = int(lengths.max()) + 2
    L = int(lengths.sum())
    packed = torch.randn(L - 1, generator=gen)  # a packed row's shifted outputs
    got = unpack_to_grid(packed, lengths, T)
    want = torch.zeros(5, T - 1)
    start = 0
    for i, n in enumerate(lengths.tolist()):
        for t in range(n - 1):
            want[i, t] = packed[start + t]
        start += n
    assert torch.equal(got, want)
    assert torch.equal(unpack_to_grid(torch.cat([packed, torch.ones(1)]), lengths, T), want)  # [L] works too


def test_unpack_keeps_the_gradient_and_handles_one_token_samples():
    x = torch.randn(6, requires_grad=True)
    out = unpack_to_grid(x, torch.tensor([3, 4]), 5)  # positions 0,1 | 3,4,5 (2 = boundary)
    out.sum().backward()
    assert x.grad.tolist() == [1, 1, 0, 1, 1, 1]
    assert unpack_to_grid(torch.zeros(0), torch.tensor([1]), 3).tolist() == [[0.0, 0.0]]


def test_token_slots_padded_vs_packed():
    lengths = [2, 7, 3, 3]
    assert token_slots([[0, 1], [2, 3]], lengths, packed=False) == (15, 2 * 7 + 2 * 3)
    assert token_slots([[0, 1], [2, 3]], lengths, packed=True) == (15, 15)
    assert token_slots([[]], lengths, packed=False) == (0, 0)
