"""rl_service.algo.logprobs against plain-Python softmax loops."""

import math

import pytest
import torch

from rl_service.algo.logprobs import entropy_from_logits, token_logprobs


def loop_log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(z - m) for z in row))
    return [z - lse for z in row]


def test_token_logprobs_and_entropy_match_loops():
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, generator=gen) * 4
    targets = torch.randint(0, V, (B, T), generator=gen)
    lp = token_logprobs(logits, targets)
    ent = entropy_from_logits(logits)
    assert lp.shape == (B, T) and ent.shape == (B, T)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    ll, tl = logits.tolist(), targets.tolist()
    for b in range(B):
        for t in range(T):
            logp = loop_log_softmax(ll[b][t])
            assert lp[b, t].item() == pytest.approx(logp[tl[b][t]], abs=1e-5)
            want_h = -sum(math.exp(x) * x for x in logp)
            assert ent[b, t].item() == pytest.approx(want_h, abs=1e-5)


def test_hand_computed_two_token_vocab():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    # logp(token 1) = ln 0.75 = -0.287682; logp(token 0) = ln 0.25 = -1.386294
    # entropy = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert lp[0, 0].item() == pytest.approx(-0.287682, abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(-1.386294, abs=1e-6)
    assert entropy_from_logits(logits)[0, 0].item() == pytest.approx(0.562335, abs=1e-6)


def test_low_precision_logits_are_upcast_and_extremes_stay_finite():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=gen)
    targets = torch.randint(0, 7, (2, 3), generator=gen)
    bf = logits.to(torch.bfloat16)
    # result in fp32, equal to the fp32 computation on the same (rounded) values
    torch.testing.assert_close(token_logprobs(bf, targets), token_logprobs(bf.float(), targets))
    assert token_logprobs(bf, targets).dtype == torch.float32
    # a near-one-hot distribution: entropy ~0 and finite, logprob of the argmax ~0
    sharp = torch.tensor([[[1e4, 0.0, -1e4]]])
    assert entropy_from_logits(sharp).item() == pytest.approx(0.0, abs=1e-6)
    assert token_logprobs(sharp, torch.tensor([[0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(token_logprobs(sharp, torch.tensor([[2]]))).all()


def test_gradient_reaches_logits():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    token_logprobs(logits, targets).sum().backward()
    # d logp_target / d z_v = 1[v = target] - p_v: each position's grad sums to 0
    assert logits.grad.abs().sum() > 0
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(2, 3), atol=1e-6, rtol=0)
