"""learner/batching.py: padding convention and the deterministic work splits (pure, no ray)."""

from __future__ import annotations

import pytest
import torch

from rl_service.learner.batching import (
    content_length,
    engine_logprobs,
    epoch_order,
    group_runs,
    micro_batches,
    minibatches,
    num_micro_batches,
    pad_samples,
    plan_micro_batches,
    rank_micro_batches,
    rank_slice,
    rank_token_micro_batches,
    split_even,
)
from rl_service.types import Sample

PAD = 0


def _sample(prompt: tuple[int, ...], response: tuple[int, ...], pid: int = 0) -> Sample:
    return Sample(
        sample_id=f"{pid}/0",
        prompt_id=pid,
        prompt_text="p",
        prompt_ids=prompt,
        response_ids=response,
        response_logprobs=tuple(-0.5 - i for i in range(len(response))),
        response_text="r",
        policy_version=0,
        finish_reason="stop",
    )


def test_pad_samples_right_pads_and_marks_response_targets() -> None:
    batch = pad_samples([_sample((1, 5, 6), (7, 2)), _sample((1, 9), (8, 8, 8, 2))], PAD)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2, 0], [1, 9, 8, 8, 8, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # targets = input_ids[:, 1:]; the mask is 1 exactly where the target is a response token.
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    targets = batch["input_ids"][:, 1:]
    assert targets[batch["response_mask"].bool()].tolist() == [7, 2, 8, 8, 8, 2]
    assert batch["input_ids"].dtype == torch.long and batch["response_mask"].dtype == torch.float32


def test_pad_samples_empty_response_has_no_target() -> None:
    batch = pad_samples([_sample((1, 5), ()), _sample((1, 5), (3,))], PAD)
    assert batch["response_mask"].tolist() == [[0, 0], [0, 1]]


def test_pad_samples_rejects_empty_prompt_and_batch() -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        pad_samples([_sample((), (3, 4))], PAD)
    with pytest.raises(ValueError):
        pad_samples([], PAD)


def test_engine_logprobs_align_with_response_mask() -> None:
    samples = [_sample((1, 5, 6), (7, 2)), _sample((1, 9), (8, 8, 2))]
    batch = pad_samples(samples, PAD)
    lp = engine_logprobs(samples, batch["input_ids"].shape[1])
    assert lp.shape == batch["response_mask"].shape
    assert lp[batch["response_mask"].bool()].tolist() == [-0.5, -1.5, -0.5, -1.5, -2.5]
    assert lp[~batch["response_mask"].bool()].abs().sum() == 0


def test_split_even_sizes_and_order() -> None:
    assert split_even(range(5), 2) == [[0, 1, 2], [3, 4]]
    assert split_even(range(2), 3) == [[0], [1], []]
    parts = split_even(range(103), 7)
    assert sum(parts, []) == list(range(103)) and max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        split_even(range(3), 0)


def test_epoch_order_is_a_seeded_permutation() -> None:
    a, b, c = epoch_order(50, seed=3), epoch_order(50, seed=3), epoch_order(50, seed=4)
    assert a == b and a != c and sorted(a) == list(range(50))
    assert epoch_order(4, seed=3, shuffle=False) == [0, 1, 2, 3]


def test_minibatches_are_the_same_rows_for_any_world_size() -> None:
    """The union of the rank slices of a minibatch is the minibatch, whatever the world size."""
    order = epoch_order(31, seed=0)
    for mb in minibatches(order, 2):
        for world in (1, 2, 3):
            slices = [rank_slice(mb, r, world) for r in range(world)]
            assert sum(slices, []) == mb
    with pytest.raises(ValueError):
        rank_slice([1, 2], 2, 2)


def test_micro_batches_pad_with_empty_chunks_to_equal_count() -> None:
    mb = list(range(15))  # ranks get 8 and 7 rows
    r0, r1 = (rank_micro_batches(mb, r, 2, micro_batch_size=7) for r in range(2))
    assert r0 == [[0, 1, 2, 3, 4, 5, 6], [7]]
    assert r1 == [[8, 9, 10, 11, 12, 13, 14], []]  # the empty chunk makes rank 1 join the 2nd collective
    assert num_micro_batches([0, 0], 4) == 1
    assert micro_batches([], 4, 2) == [[], []]
    with pytest.raises(ValueError):
        micro_batches(list(range(9)), 4, 2)


def test_rank_micro_batches_cover_every_row_once() -> None:
    rows = epoch_order(101, seed=1)
    for world in (1, 2, 4):
        per_rank = [rank_micro_batches(rows, r, world, micro_batch_size=8) for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1
        seen = [i for p in per_rank for chunk in p for i in chunk]
        assert sorted(seen) == list(range(101))


def test_group_runs_follow_prompt_ids_and_group_size() -> None:
    assert group_runs([7, 7, 9, 9, 9], 2) == [[0, 1], [2, 3], [4]]
    assert group_runs([1, 1, 1, 2, 2, 2, 2], 4) == [[0, 1, 2], [3, 4, 5, 6]]  # a dropped sample shortens group 1
    assert group_runs([], 4) == []


def test_content_length_drops_pure_padding_columns() -> None:
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert content_length(am) == 3
    assert content_length(torch.tensor([[1, 0, 0]])) == 2  # at least one target column


def test_grouped_advantages_handle_a_group_shortened_by_a_dropped_sample() -> None:
    from rl_service.algo.advantages import group_advantages, grouped_advantages, reward_metrics

    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0])  # prompt 8 lost one of 4 samples
    prompt_ids = [7, 7, 7, 7, 8, 8, 8, 9, 9]
    groups = group_runs(prompt_ids, 4)
    adv = grouped_advantages(scores, groups, "grpo")
    assert torch.allclose(adv[:4], group_advantages(scores[:4], 4, "grpo")[0])
    assert torch.allclose(adv[4:7], group_advantages(scores[4:7], 3, "grpo")[0])
    assert adv[7:].abs().sum() == 0  # equal rewards: no signal
    assert reward_metrics(scores, groups)["reward/frac_zero_std"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_token_micro_batches_cover_every_row_once_with_equal_counts(world_size: int) -> None:
    import random

    rng = random.Random(world_size)
    lengths = [rng.randint(2, 30) for _ in range(23)]
    rows = [3, 17, 5, 0, 22, 9, 11, 1, 14, 8, 20, 2, 6]  # a minibatch, in epoch order
    plans = [rank_token_micro_batches(rows, r, world_size, lengths, 40) for r in range(world_size)]
    assert len({len(p) for p in plans}) == 1, "every rank runs the same number of micro-batches"
    assert sorted(i for p in plans for mb in p for i in mb) == sorted(rows)
    tokens = [sum(lengths[i] for mb in p for i in mb) for p in plans]
    assert max(tokens) - min(tokens) <= 40, "the ranks' tokens differ by at most one bin"
    for p in plans:
        for mb in p:
            assert sum(lengths[i] for i in mb) <= 40 or len(mb) == 1
        assert sum(1 for mb in p if mb) >= len(p) - 1  # at most one empty (dummy) micro-batch
    assert plan_micro_batches(rows, 0, world_size, 4, 40, lengths) == plans[0]
    assert plan_micro_batches(rows, 0, world_size, 4) == rank_micro_batches(rows, 0, world_size, 4)
    with pytest.raises(ValueError, match="lengths"):
        plan_micro_batches(rows, 0, world_size, 4, 40)
    assert rank_token_micro_batches([], 1, 2, lengths, 40) == [[]]  # an empty minibatch: one dummy
