"""rl_service.algo.masking against plain-Python loops on random right-padded masks."""

import math

import pytest
import torch

from rl_service.algo.masking import aggregate_loss, loss_denom, masked_mean, masked_sum, masked_var, masked_whiten


def right_padded_mask(B, T, gen, as_bool=False):
    """Random lengths in [0, T]; row 0 is full and row 1 empty so both edges are always covered."""
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 0
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return mask if as_bool else mask.float()


def loop_stats(x, mask):
    """(sum, count, mean, biased var, unbiased var) over masked entries, python floats."""
    vals = [x[b][t] for b in range(len(x)) for t in range(len(x[0])) if mask[b][t]]
    n = len(vals)
    s = sum(vals)
    mean = s / n if n else 0.0
    sq = sum((v - mean) ** 2 for v in vals)
    return s, n, mean, (sq / n if n else 0.0), (sq / (n - 1) if n > 1 else 0.0)


@pytest.mark.parametrize("as_bool", [False, True])
def test_masked_sum_mean_match_loops(as_bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=gen)
    mask = right_padded_mask(6, 7, gen, as_bool)
    xl, ml = x.tolist(), mask.tolist()
    s, n, mean, _, _ = loop_stats(xl, ml)
    assert masked_sum(x, mask).item() == pytest.approx(s, abs=1e-5)
    assert masked_mean(x, mask).item() == pytest.approx(mean, abs=1e-6)
    # per row (dim=-1) and per column (dim=0); the empty row must give 0, not NaN
    row_means = masked_mean(x, mask, dim=-1).tolist()
    row_sums = masked_sum(x, mask, dim=-1).tolist()
    for b in range(6):
        vals = [xl[b][t] for t in range(7) if ml[b][t]]
        assert row_sums[b] == pytest.approx(sum(vals), abs=1e-5)
        assert row_means[b] == pytest.approx(sum(vals) / len(vals) if vals else 0.0, abs=1e-6)
    col_means = masked_mean(x, mask, dim=0).tolist()
    for t in range(7):
        vals = [xl[b][t] for b in range(6) if ml[b][t]]
        assert col_means[t] == pytest.approx(sum(vals) / len(vals) if vals else 0.0, abs=1e-6)
    assert masked_mean(x, mask, dim=-1)[1].item() == 0.0


def test_empty_mask_and_padding_garbage():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    empty = torch.zeros(2, 2)
    assert masked_mean(x, empty).item() == 0.0
    assert masked_var(x, empty).item() == 0.0
    assert torch.equal(masked_whiten(x, empty), torch.zeros(2, 2))
    # NaN/inf under the padding must not leak into the result
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert masked_sum(x, mask).item() == 3.0
    assert masked_mean(x, mask).item() == 1.5
    assert torch.isfinite(masked_whiten(x, mask)).all()


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_loop(unbiased):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 9, generator=gen) * 3 + 1
    mask = right_padded_mask(5, 9, gen)
    _, _, _, var_b, var_u = loop_stats(x.tolist(), mask.tolist())
    assert masked_var(x, mask, unbiased=unbiased).item() == pytest.approx(var_u if unbiased else var_b, rel=1e-5)
    # a single entry has no unbiased variance: 0, never NaN/inf
    one = torch.zeros(5, 9)
    one[0, 0] = 1
    assert masked_var(x, one, unbiased=True).item() == 0.0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(shift_mean):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 8, generator=gen) * 2 + 5
    mask = right_padded_mask(6, 8, gen)
    xl, ml = x.tolist(), mask.tolist()
    _, _, mean, _, var_u = loop_stats(xl, ml)
    out = masked_whiten(x, mask, shift_mean=shift_mean, eps=1e-8).tolist()
    for b in range(6):
        for t in range(8):
            want = 0.0
            if ml[b][t]:
                want = (xl[b][t] - mean) / math.sqrt(var_u + 1e-8) + (0.0 if shift_mean else mean)
            assert out[b][t] == pytest.approx(want, abs=1e-5)


def test_aggregate_loss_hand_computed():
    # loss [[1,2,3],[4,9,9]], mask [[1,1,1],[1,0,0]] (the 9s are padding)
    # token_mean = (1+2+3+4)/4 = 2.5; seq_mean = (mean(1,2,3)=2 + mean(4)=4) / 2 rows = 3.0
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate_loss(loss, mask, "seq_mean").item() == pytest.approx(3.0)
    # an explicit denominator replaces the count
    assert aggregate_loss(loss, mask, "token_mean", denom=8.0).item() == pytest.approx(10 / 8)
    assert aggregate_loss(loss, mask, "seq_mean", denom=3).item() == pytest.approx(6 / 3)
    # zero denominators never divide by zero
    z = torch.zeros(2, 3)
    for mode in ("token_mean", "seq_mean"):
        assert aggregate_loss(loss, z, mode).item() == 0.0
        assert aggregate_loss(loss, z, mode, denom=0.0).item() == 0.0
    with pytest.raises(ValueError, match="seq_mean"):
        aggregate_loss(loss, mask, "mean")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_aggregate_loss_matches_loop(mode):
    gen = torch.Generator().manual_seed(3)
    loss = torch.randn(7, 6, generator=gen)
    mask = right_padded_mask(7, 6, gen)
    ll, ml = loss.tolist(), mask.tolist()
    if mode == "token_mean":
        s, n, _, _, _ = loop_stats(ll, ml)
        want = s / n
    else:
        per_seq = []
        for b in range(7):
            vals = [ll[b][t] for t in range(6) if ml[b][t]]
            if vals:
                per_seq.append(sum(vals) / len(vals))
        want = sum(per_seq) / len(per_seq)
    assert aggregate_loss(loss, mask, mode).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_aggregate_loss_global_denom_splits_exactly(mode):
    """Two 'processes' each dividing their local sum by the global count add up to the full loss,
    and so do their gradients (what data-parallel gradient summation relies on)."""
    gen = torch.Generator().manual_seed(4)
    loss = torch.randn(8, 5, generator=gen, requires_grad=True)
    mask = right_padded_mask(8, 5, gen)  # row 1 (empty) lands in the first half
    full = aggregate_loss(loss, mask, mode)
    (full_grad,) = torch.autograd.grad(full, loss)
    halves = [(slice(0, 4)), (slice(4, 8))]
    global_denom = sum(loss_denom(mask[h], mode) for h in halves)
    assert global_denom == loss_denom(mask, mode)
    parts = [aggregate_loss(loss[h], mask[h], mode, denom=global_denom) for h in halves]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-6)
    (split_grad,) = torch.autograd.grad(parts[0] + parts[1], loss)
    torch.testing.assert_close(split_grad, full_grad)
    # dividing by the LOCAL count instead would not match (the halves differ in size)
    local = [aggregate_loss(loss[h], mask[h], mode) for h in halves]
    assert (local[0] + local[1]).item() / 2 != pytest.approx(full.item(), abs=1e-6)


def test_right_pad_matches_a_loop():
    from rl_service.algo.masking import right_pad

    rows = [[5, 6, 7], [8], []]
    ids, mask = right_pad(rows, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_left_pad_against_a_loop():
    from rl_service.algo.masking import left_pad

    rows = [[5, 6, 7], [8], [], [1, 2]]
    ids, mask = left_pad(rows, pad_id=0)
    assert ids.shape == mask.shape == (4, 3)
    for b, r in enumerate(rows):
        want = [0] * (3 - len(r)) + r
        assert ids[b].tolist() == want
        assert mask[b].tolist() == [0] * (3 - len(r)) + [1] * len(r)


def test_zero_signal_rows_match_a_loop():
    from rl_service.algo.masking import zero_signal_rows

    gen = torch.Generator().manual_seed(3)
    mask = right_padded_mask(8, 5, gen)
    adv = torch.randn(8, 5, generator=gen)
    adv[2:5] = 0.0  # rows 2-4 carry no signal
    adv[5, :] = 0.0
    adv[5, -1] = float("nan")  # NaN: not zero when it is on the mask
    adv[6] = torch.where(mask[6].bool(), torch.zeros(5), torch.ones(5))  # nonzero only off the mask
    got = zero_signal_rows(adv, mask).tolist()
    want = [all(adv[b, t] == 0 for t in range(5) if mask[b, t]) for b in range(8)]
    assert got == want
    assert got[1] and got[2] and got[6]  # the empty row, a zero row, zero on the mask
    assert got[5] == (not bool(mask[5, -1]))


def test_work_token_counts_match_a_plain_loop():
    from rl_service.algo.masking import work_token_counts

    g = torch.Generator().manual_seed(3)
    B, T = 6, 9
    mask = (torch.rand(B, T - 1, generator=g) < 0.6).float()
    adv = torch.randn(B, T - 1, generator=g)
    adv[1] = 0.0  # a zero-advantage group member
    adv[3, :4] = 0.0
    attention = (torch.rand(B, T, generator=g) < 0.8).long()
    for every in (False, True):
        trained = nonzero = processed = 0
        for i in range(B):
            for t in range(T - 1):
                if mask[i, t] > 0:
                    trained += 1
                    nonzero += 1 if (every or adv[i, t] != 0) else 0
            processed += sum(1 for t in range(T) if attention[i, t])
        got = work_token_counts(mask, adv, attention, every_token_has_grad=every)
        assert got == {"tokens/trained": trained, "tokens/nonzero_grad": nonzero, "tokens/processed": processed}
    assert work_token_counts(mask, adv, attention, False)["tokens/nonzero_grad"] < trained
