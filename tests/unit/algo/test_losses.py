"""rl_service.algo.losses against plain-Python loops, plus hand-worked clip cases."""

import math

import pytest
import torch

from rl_service.algo.losses import entropy_bonus, explained_variance, ppo_policy_loss, value_loss
from rl_service.algo.masking import loss_denom


def right_padded_mask(B, T, gen):
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 0
    return (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()


def loop_aggregate(per_tok, mask, mode):
    """per_tok: python [B][T] -> (loss, weight[b][t]) where loss = sum weight * per_tok."""
    B, T = len(per_tok), len(per_tok[0])
    lengths = [sum(1 for t in range(T) if mask[b][t]) for b in range(B)]
    if mode == "token_mean":
        n = sum(lengths)
        weight = [[(1.0 / n if mask[b][t] else 0.0) for t in range(T)] for b in range(B)]
    else:
        nseq = sum(1 for L in lengths if L)
        weight = [[(1.0 / (lengths[b] * nseq) if mask[b][t] else 0.0) for t in range(T)] for b in range(B)]
    loss = sum(weight[b][t] * per_tok[b][t] for b in range(B) for t in range(T))
    return loss, weight


def random_ppo_inputs(seed, B=6, T=8):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen) * 3
    new = old + torch.randn(B, T, generator=gen) * 0.3  # ratios spread across the clip range
    adv = torch.randn(B, T, generator=gen)
    return new, old, adv, right_padded_mask(B, T, gen)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_ppo_policy_loss_matches_loop(agg):
    new, old, adv, mask = random_ppo_inputs(0)
    eps = 0.2
    logprobs = new.clone().requires_grad_(True)
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, eps, agg=agg)
    loss.backward()
    nl, ol, al, ml = new.tolist(), old.tolist(), adv.tolist(), mask.tolist()
    B, T = len(nl), len(nl[0])
    per_tok = [[0.0] * T for _ in range(B)]
    dloss_dtok = [[0.0] * T for _ in range(B)]  # d per_tok / d logprob
    n_tok = n_clip = 0
    kl_sum = 0.0
    for b in range(B):
        for t in range(T):
            if not ml[b][t]:
                continue
            log_r = nl[b][t] - ol[b][t]
            r = math.exp(log_r)
            unclipped = -al[b][t] * r
            clipped = -al[b][t] * min(max(r, 1 - eps), 1 + eps)
            per_tok[b][t] = max(unclipped, clipped)
            dloss_dtok[b][t] = -al[b][t] * r if unclipped >= clipped else 0.0
            n_tok += 1
            n_clip += clipped > unclipped
            kl_sum += r - 1 - log_r
    want, weight = loop_aggregate(per_tok, ml, agg)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert metrics["loss/policy"] == pytest.approx(want, abs=1e-5)
    assert metrics["policy/clipfrac"] == pytest.approx(n_clip / n_tok)
    assert 0 < n_clip < n_tok  # the random inputs exercise both branches
    assert metrics["policy/approx_kl"] == pytest.approx(kl_sum / n_tok, abs=1e-6)
    want_grad = torch.tensor([[weight[b][t] * dloss_dtok[b][t] for t in range(T)] for b in range(B)])
    torch.testing.assert_close(logprobs.grad, want_grad, atol=1e-6, rtol=1e-5)
    assert all(isinstance(v, float) for v in metrics.values())


def test_ppo_policy_loss_hand_computed_clip_cases():
    # eps = 0.2, three tokens, token_mean over 3:
    #   A=+1, ratio 1.5: unclipped -1.5, clipped -1.2 -> max -1.2 (clipped, no gradient)
    #   A=-1, ratio 0.5: unclipped +0.5, clipped +0.8 -> max +0.8 (clipped, no gradient)
    #   A=-1, ratio 1.5: unclipped +1.5, clipped +1.2 -> max +1.5 (unclipped: a bad move is
    #                    never clipped away); d/dlogp = -A * ratio / 3 = 1.5 / 3 = 0.5
    # loss = (-1.2 + 0.8 + 1.5) / 3 = 0.366667; clipfrac = 2/3
    old = torch.zeros(1, 3)
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0]])
    loss, metrics = ppo_policy_loss(logprobs, old, adv, torch.ones(1, 3), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.366667, abs=1e-6)
    assert metrics["policy/clipfrac"] == pytest.approx(2 / 3)
    # approx_kl (k3, ratio - 1 - ln ratio): (0.5 - 0.405465) * 2 + (-0.5 + 0.693147) = 0.382217 / 3
    assert metrics["policy/approx_kl"] == pytest.approx(0.382217 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, 0.5]]))


def test_ppo_gradient_flows_only_through_masked_tokens():
    new, old, adv, mask = random_ppo_inputs(1)
    logprobs = new.clone().requires_grad_(True)
    loss, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    loss.backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() > 0
    assert torch.equal(logprobs.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    # on-policy (ratio == 1) the gradient is exactly -A / n_tokens on every masked token
    same = old.clone().requires_grad_(True)
    ppo_policy_loss(same, old, adv, mask, 0.2)[0].backward()
    torch.testing.assert_close(same.grad, -adv * mask / mask.sum())


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_ppo_split_with_global_denom_equals_full_batch_gradient(agg):
    new, old, adv, mask = random_ppo_inputs(2)
    full_lp = new.clone().requires_grad_(True)
    ppo_policy_loss(full_lp, old, adv, mask, 0.2, agg=agg)[0].backward()
    halves = [slice(0, 3), slice(3, 6)]
    denom = sum(loss_denom(mask[h], agg) for h in halves)
    split_lp = new.clone().requires_grad_(True)
    for h in halves:  # like two processes whose gradients are summed
        ppo_policy_loss(split_lp[h], old[h], adv[h], mask[h], 0.2, agg=agg, denom=denom)[0].backward()
    torch.testing.assert_close(split_lp.grad, full_lp.grad)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_value_loss_matches_loop(agg):
    gen = torch.Generator().manual_seed(3)
    B, T, eps = 6, 7, 0.2
    old = torch.randn(B, T, generator=gen)
    values = old + torch.randn(B, T, generator=gen) * 0.3
    returns = torch.randn(B, T, generator=gen)
    mask = right_padded_mask(B, T, gen)
    loss, metrics = value_loss(values, old, returns, mask, eps, agg=agg)
    vl, ol, rl, ml = values.tolist(), old.tolist(), returns.tolist(), mask.tolist()
    per_tok = [[0.0] * T for _ in range(B)]
    n_tok = n_clip = 0
    for b in range(B):
        for t in range(T):
            if ml[b][t]:
                vc = min(max(vl[b][t], ol[b][t] - eps), ol[b][t] + eps)
                e1, e2 = (vl[b][t] - rl[b][t]) ** 2, (vc - rl[b][t]) ** 2
                per_tok[b][t] = 0.5 * max(e1, e2)
                n_tok += 1
                n_clip += e2 > e1
    want, _ = loop_aggregate(per_tok, ml, agg)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert metrics["loss/value"] == pytest.approx(want, abs=1e-5)
    assert metrics["value/clipfrac"] == pytest.approx(n_clip / n_tok)


def test_value_loss_hand_computed():
    # eps 0.2:
    #   v=1.5, old=1.0, R=2.0: clip(v) = 1.2; (v-R)^2 = 0.25, (1.2-R)^2 = 0.64 -> 0.5*0.64 = 0.32 (clipped)
    #   v=1.1, old=1.0, R=2.0: inside the range -> 0.5 * 0.81 = 0.405 (not clipped)
    # token_mean = (0.32 + 0.405) / 2 = 0.3625; clipfrac = 1/2
    loss, metrics = value_loss(
        torch.tensor([[1.5, 1.1]]),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[2.0, 2.0]]),
        torch.ones(1, 2),
        clip_eps=0.2,
    )
    assert loss.item() == pytest.approx(0.3625, abs=1e-6)
    assert metrics["value/clipfrac"] == 0.5


def test_entropy_bonus_matches_loop():
    gen = torch.Generator().manual_seed(4)
    ent = torch.rand(5, 6, generator=gen) * 2
    mask = right_padded_mask(5, 6, gen)
    el, ml = ent.tolist(), mask.tolist()
    for agg in ("token_mean", "seq_mean"):
        value, metrics = entropy_bonus(ent, mask, agg)
        want, _ = loop_aggregate(el, ml, agg)
        assert value.item() == pytest.approx(want, abs=1e-6)
        tok_mean, _ = loop_aggregate(el, ml, "token_mean")
        assert metrics["entropy/mean"] == pytest.approx(tok_mean, abs=1e-6)


def test_explained_variance_matches_loop_and_edge_cases():
    gen = torch.Generator().manual_seed(5)
    returns = torch.randn(5, 6, generator=gen)
    values = returns + torch.randn(5, 6, generator=gen) * 0.5
    mask = right_padded_mask(5, 6, gen)
    rl, vl, ml = returns.tolist(), values.tolist(), mask.tolist()
    ys = [rl[b][t] for b in range(5) for t in range(6) if ml[b][t]]
    ds = [rl[b][t] - vl[b][t] for b in range(5) for t in range(6) if ml[b][t]]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    ev = explained_variance(values, returns, mask)
    assert isinstance(ev, float)
    assert ev == pytest.approx(1 - var(ds) / var(ys), abs=1e-5)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(values, torch.full((5, 6), 3.0), mask) == 0.0  # Var(R) = 0: defined as 0
