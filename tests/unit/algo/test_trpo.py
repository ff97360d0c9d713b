"""algo/trpo.py against direct computations: CG against a linear solve, the step scale against
the quadratic model, and a whole TRPO step on a small categorical policy (exact KL, exact Fisher
by torch.autograd.functional.hessian) whose line search never accepts a step beyond max_kl."""

import math

import pytest
import torch

from rl_service.algo import trpo


def spd(n: int, seed: int, cond: float = 50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_solves_a_positive_definite_system_like_a_direct_solve(seed):
    a = spd(12, seed)
    b = torch.randn(12, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iters=12, residual_tol=1e-20)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8, rtol=1e-8)


def test_cg_with_few_iterations_lowers_the_error_in_the_a_norm_each_time():
    """What CG minimises over its Krylov space: ||x_k - x*||_A, so it falls with every iteration."""
    a, b = spd(30, 3, cond=1e3), torch.ones(30, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    errors = []
    for k in range(0, 8):
        e = trpo.conjugate_gradient(lambda v: a @ v, b, iters=k) - exact
        errors.append(float(e @ a @ e))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_step_scale_reaches_max_kl_in_the_quadratic_model():
    a = spd(5, 4)
    x = torch.randn(5, dtype=torch.float64)
    beta = trpo.step_scale(x, a @ x, max_kl=0.01)
    d = beta * x
    assert 0.5 * float(d @ a @ d) == pytest.approx(0.01, rel=1e-9)
    assert trpo.step_scale(x, -x, 0.01) == 0.0  # not positive: no step


def test_line_search_takes_the_first_fraction_within_the_bound():
    calls = []

    def evaluate(frac):  # KL grows with the square of the step, the gain linearly
        calls.append(frac)
        return frac * 1.0, frac**2 * 0.04

    out = trpo.line_search(evaluate, expected_gain=1.0, max_kl=0.01)
    assert out.accepted and out.frac == 0.5 and out.kl <= 0.01 and calls == [1.0, 0.5]
    # a gain that never shows up: nothing accepted, the caller keeps theta_old
    none = trpo.line_search(lambda f: (-f, 0.0), expected_gain=1.0, max_kl=0.01, max_backtracks=3)
    assert not none.accepted and none.frac == 0.0 and none.tries == 4
    # a gain far below the linear prediction is refused too (accept_ratio)
    weak = trpo.line_search(lambda f: (1e-4 * f, 0.0), expected_gain=1.0, max_kl=0.01, max_backtracks=2)
    assert not weak.accepted


def _toy_problem(seed: int):
    """A softmax policy over 6 actions in 4 states: logits = states @ W [S, A]; samples from it
    with random advantages."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w_old = torch.randn(3, 6, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 6, (4, 8), generator=g)  # 8 samples per state
    adv = torch.randn(4, 8, generator=g, dtype=torch.float64)
    return states, w_old, actions, adv


def _policy(states, w):
    return torch.log_softmax(states @ w, -1)  # [S, A]


def _surrogate(states, w, w_old, actions, adv):
    lp, lp_old = _policy(states, w), _policy(states, w_old).detach()
    ratio = torch.exp(lp.gather(1, actions) - lp_old.gather(1, actions))
    return (ratio * adv).mean()


def _mean_kl(states, w, w_old):
    lp, lp_old = _policy(states, w), _policy(states, w_old).detach()
    return (lp_old.exp() * (lp_old - lp)).sum(-1).mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_trpo_step_on_a_categorical_policy_stays_in_the_trust_region(seed):
    states, w_old, actions, adv = _toy_problem(seed)
    max_kl = 0.01
    w = w_old.clone().requires_grad_(True)
    g = torch.autograd.grad(_surrogate(states, w, w_old, actions, adv), w)[0].reshape(-1)
    fisher = torch.autograd.functional.hessian(lambda v: _mean_kl(states, v.view(3, 6), w_old), w_old.reshape(-1))

    def fvp(v):  # the double-backward product the learner uses, against the explicit Hessian below
        wv = w_old.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_mean_kl(states, wv, w_old), wv, create_graph=True)
        return torch.autograd.grad((grad.reshape(-1) * v).sum(), wv)[0].reshape(-1)

    v = torch.randn(18, dtype=torch.float64)
    assert torch.allclose(fvp(v), fisher @ v, atol=1e-10)
    damped = lambda v: fvp(v) + 1e-3 * v
    x = trpo.conjugate_gradient(damped, g, iters=18, residual_tol=1e-18)
    assert torch.allclose(x, torch.linalg.solve(fisher + 1e-3 * torch.eye(18, dtype=torch.float64), g), atol=1e-6)
    full = trpo.step_scale(x, damped(x), max_kl) * x
    base = float(_surrogate(states, w_old, w_old, actions, adv))
    tried = []

    def evaluate(frac):
        w_new = w_old + frac * full.view(3, 6)
        kl = float(_mean_kl(states, w_new, w_old))
        tried.append(kl)
        return float(_surrogate(states, w_new, w_old, actions, adv)) - base, kl

    out = trpo.line_search(evaluate, float(g @ full), max_kl)
    assert out.accepted and 0 < out.kl <= max_kl and out.gain > 0
    assert out.kl == tried[-1]  # the accepted one is the last tried: every earlier one broke a rule


def test_flat_and_unflat_round_trip():
    ts = [torch.randn(2, 3), torch.randn(4), torch.randn(1, 1, 2)]
    back = trpo.unflat(trpo.flat(ts), ts)
    assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(ts, back))
