"""rl_service.algo.advantages: GAE and the group estimators against plain-Python loops."""

import statistics

import pytest
import torch

from rl_service.algo.advantages import GROUP_BASELINES, broadcast_to_tokens, gae, group_advantages


def right_padded_mask(B, T, gen):
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 0
    return (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()


def loop_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE as an explicit sum: A_t = sum_l (gamma*lam)^l delta_{t+l}, V after the end = 0."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        L = sum(1 for t in range(T) if mask[b][t])
        deltas = []
        for t in range(L):
            next_v = values[b][t + 1] if t + 1 < L else 0.0
            deltas.append(rewards[b][t] + gamma * next_v - values[b][t])
        for t in range(L):
            adv[b][t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(L - t))
            ret[b][t] = adv[b][t] + values[b][t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_loop(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards = torch.randn(B, T, generator=gen)
    values = torch.randn(B, T, generator=gen)
    mask = right_padded_mask(B, T, gen)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = loop_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(want_adv), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, torch.tensor(want_ret), atol=1e-5, rtol=1e-5)


def test_gae_hand_computed_three_tokens():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lam 0.8 (gamma*lam = 0.72); V after the end = 0
    # delta2 = 1 + 0.9*0   - 0.7 = 0.3
    # delta1 = 0 + 0.9*0.7 - 0.6 = 0.03
    # delta0 = 0 + 0.9*0.6 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    # Two padded positions hold garbage rewards/values that must change nothing.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, 7.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0, 0.0, 0.0]]))


def loop_group(scores, n, estimator, eps):
    out = []
    centred_all = []
    for g in range(0, len(scores), n):
        grp = scores[g : g + n]
        mean = sum(grp) / n
        std = statistics.stdev(grp) if n > 1 else 0.0
        for r in grp:
            if max(grp) == min(grp):
                out.append(0.0)
            elif estimator == "grpo":
                out.append((r - mean) / (std + eps))
            elif estimator in ("dr_grpo", "reinforce_pp"):
                out.append(r - mean)
            elif estimator == "rloo":
                out.append(r - (sum(grp) - r) / (n - 1))
        centred_all.extend(r - mean for r in grp)
    if estimator == "reinforce_pp":
        batch_std = statistics.stdev(centred_all)
        out = [a / (batch_std + eps) for a in out]
    return out


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_group_advantages_match_loop(estimator):
    gen = torch.Generator().manual_seed(1)
    n, G = 4, 5
    scores = torch.randn(G * n, generator=gen)
    scores[4:8] = 0.7  # one zero-variance group
    scores[8:12] = torch.tensor([1.0, 0.0, 1.0, 1.0])  # binary rewards, as in exact-match tasks
    adv, metrics = group_advantages(scores, n, estimator)
    want = loop_group(scores.tolist(), n, estimator, 1e-6)
    torch.testing.assert_close(adv, torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert metrics["reward/frac_zero_std"] == pytest.approx(1 / 5)
    assert all(isinstance(v, float) for v in metrics.values())


def test_group_advantages_hand_computed_and_zero_variance():
    # group 0: [1, 1, 1, 1] -> all equal -> exactly 0 for every estimator
    # group 1: [0, 1, 0, 1]: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = 0.577350
    #   grpo    = +-0.5 / 0.577350 = +-0.866025
    #   dr_grpo = +-0.5
    #   rloo    : r=1 -> 1 - 1/3 = 0.666667; r=0 -> 0 - 2/3 = -0.666667
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    sign = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    expected = {"grpo": 0.866025, "dr_grpo": 0.5, "rloo": 2 / 3}
    for est, mag in expected.items():
        adv, metrics = group_advantages(scores, 4, est)
        assert torch.equal(adv[:4], torch.zeros(4))
        torch.testing.assert_close(adv[4:], sign * mag, atol=1e-5, rtol=0)
        assert metrics["reward/frac_zero_std"] == 0.5
    # reinforce_pp: centred [0,0,0,0,-.5,.5,-.5,.5], batch std = sqrt(4*0.25/7) = 0.377964 -> +-1.322876
    adv, _ = group_advantages(scores, 4, "reinforce_pp")
    torch.testing.assert_close(adv[4:], sign * 1.322876, atol=1e-5, rtol=0)
    assert torch.equal(adv[:4], torch.zeros(4))


@pytest.mark.parametrize("estimator", sorted(GROUP_BASELINES))
def test_equal_rewards_give_exact_zero_not_nan(estimator):
    # 0.1 * 3 / 3 != 0.1 in floating point: without the explicit zeroing, grpo would
    # divide rounding noise by eps. Also group_size 1 (no std at all) must not NaN.
    scores = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3, 0.3])
    adv, metrics = group_advantages(scores, 3, estimator)
    assert torch.equal(adv, torch.zeros(6))
    assert metrics["reward/frac_zero_std"] == 1.0
    adv1, m1 = group_advantages(torch.tensor([0.2, 0.9]), 1, estimator)
    assert torch.equal(adv1, torch.zeros(2)) and m1["reward/frac_zero_std"] == 1.0


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="not a whole number of groups of size 4"):
        group_advantages(torch.zeros(6), 4, "grpo")
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2, "grpo")


def test_broadcast_to_tokens_matches_loop():
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(5, generator=gen)
    mask = right_padded_mask(5, 6, gen)
    out = broadcast_to_tokens(adv, mask)
    al, ml = adv.tolist(), mask.tolist()
    for b in range(5):
        for t in range(6):
            assert out[b, t].item() == (al[b] if ml[b][t] else 0.0)
