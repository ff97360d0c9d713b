"""algo/ilql.py against loop-written references: the expectile loss, the bootstrapped Q target with
terminal states, the CQL term, the whole objective, Polyak averaging and the decoding shift."""

import math

import pytest
import torch

from rl_service.algo import ilql


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 5, 7
    q_all = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    target_q = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    actions = torch.randint(0, V, (B, T), generator=g)
    rewards = torch.zeros(B, T, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    for b, last in enumerate([4, 2, 0]):  # a terminal reward on each row's last token
        rewards[b, last] = float(torch.randn(1, generator=g))
    return q_all, target_q, values, actions, rewards, mask


def test_expectile_loss_weighs_the_two_signs_by_tau():
    diff = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    for tau in (0.5, 0.7, 0.9):
        got = ilql.expectile_loss(diff, tau)
        for d, x in zip(diff.tolist(), got.tolist()):
            assert x == pytest.approx((tau if d >= 0 else 1 - tau) * d * d)
    with pytest.raises(ValueError):
        ilql.expectile_loss(diff, 1.0)


def test_expectile_minimiser_is_an_upper_expectile():
    """argmin_v mean(expectile(x - v)) moves from the mean (tau 1/2) toward the max (tau -> 1)."""
    x = torch.tensor([0.0, 1.0, 2.0, 10.0], dtype=torch.float64)
    grid = torch.linspace(-1, 11, 12001, dtype=torch.float64)
    best = {
        tau: float(grid[ilql.expectile_loss(x[None, :] - grid[:, None], tau).mean(1).argmin()])
        for tau in (0.5, 0.9, 0.99)
    }
    assert best[0.5] == pytest.approx(float(x.mean()), abs=2e-3)
    assert best[0.5] < best[0.9] < best[0.99] < 10.0


def test_the_objective_equals_a_loop_written_one():
    q_all, target_q, values, actions, rewards, mask = _batch()
    gamma, tau, alpha = 0.9, 0.7, 0.3
    loss, m = ilql.ilql_losses(q_all, target_q, values, actions, rewards, mask, gamma, tau, alpha)
    q_terms, v_terms, c_terms = [], [], []
    B, T, _ = q_all.shape
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                continue
            q = float(q_all[b, t, actions[b, t]])
            v_next = float(values[b, t + 1]) if t + 1 < T and mask[b, t + 1] == 1 else 0.0
            q_terms.append((q - (float(rewards[b, t]) + gamma * v_next)) ** 2)
            d = float(target_q[b, t] - values[b, t])
            v_terms.append((tau if d >= 0 else 1 - tau) * d * d)
            c_terms.append(math.log(sum(math.exp(float(z)) for z in q_all[b, t])) - q)
    n = len(q_terms)
    expected = sum(q_terms) / n + sum(v_terms) / n + alpha * sum(c_terms) / n
    assert float(loss) == pytest.approx(expected, rel=1e-6)  # algo/ reduces in fp32
    assert m["loss/q"] == pytest.approx(sum(q_terms) / n) and m["loss/cql"] == pytest.approx(sum(c_terms) / n)


def test_gradients_go_where_ilql_sends_them():
    """The Q loss does not train V (its bootstrap target is detached) and the V loss does not
    train Q (its target is the target network's): each head gets only its own losses."""
    q_all, target_q, values, actions, rewards, mask = _batch(1)
    q_all.requires_grad_(True)
    values.requires_grad_(True)
    target_q.requires_grad_(True)
    loss, _ = ilql.ilql_losses(q_all, target_q, values, actions, rewards, mask, 0.9, 0.7, 0.0)
    loss.backward()
    assert target_q.grad is None or float(target_q.grad.abs().max()) == 0.0
    # V's gradient is that of the expectile term alone
    v2 = values.detach().clone().requires_grad_(True)
    ilql.expectile_loss(target_q.detach() - v2, 0.7).mul(mask).sum().div(mask.sum()).backward()
    assert torch.allclose(values.grad, v2.grad)
    # padded positions get no gradient
    assert float(q_all.grad[1, 3:].abs().max()) == 0.0 and float(values.grad[2, 1:].abs().max()) == 0.0


def test_polyak_update_and_the_decoding_shift():
    target, online = [torch.zeros(3)], [torch.ones(3)]
    ilql.polyak_update(target, online, 0.25)
    assert torch.allclose(target[0], torch.full((3,), 0.25))
    ilql.polyak_update(target, online, 1.0)
    assert torch.equal(target[0], online[0])
    logits, q, v = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2)
    shifted = ilql.shifted_logits(logits, q, v, beta=2.0)
    for i in range(2):
        for a in range(4):
            assert float(shifted[i, a]) == pytest.approx(float(logits[i, a] + 2.0 * (q[i, a] - v[i])), abs=1e-6)
    assert torch.equal(ilql.shifted_logits(logits, q, v, 0.0), logits)
    # the shift by V is the same for every token: the sampling distribution depends on Q only
    assert torch.allclose(torch.softmax(shifted, -1), torch.softmax(logits + 2.0 * q, -1), atol=1e-6)
