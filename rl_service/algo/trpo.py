"""TRPO's step (Schulman et al. 2015), as pure torch on flat vectors and callables.

    g   = grad of the surrogate  L(theta) = mean_t ratio_t * A_t          (at theta_old: ratio 1)
    F v = Hessian of the mean KL(pi_old || pi_theta) at theta_old, times v (Fisher-vector product)
    x   = conjugate_gradient(F, g)                                        ~ F^-1 g
    beta = sqrt(2 * max_kl / (x . F x))                                   the step that reaches max_kl
                                                                          in the quadratic model
    line search: theta_old + frac * beta * x, frac = 1, 1/2, 1/4, ...  until the measured KL is
    <= max_kl AND the surrogate improved (by > 0 and by >= accept_ratio of the linear prediction)

Nothing here knows about models: the learner hands in closures (learner/trpo_update.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> Tensor:
    """x with A x ~ b for a symmetric positive-definite A given only as `matvec(v) = A v` [n].
    Plain CG from x = 0: at most `iters` products, stops once ||r||^2 < residual_tol."""
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x
    p = r.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if rr < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / torch.dot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def step_scale(x: Tensor, fx: Tensor, max_kl: float) -> float:
    """beta with KL(theta + beta x) = max_kl under the quadratic model KL ~ 1/2 d^T F d:
    sqrt(2 max_kl / x^T F x). 0 when x^T F x is not positive (no trustworthy direction)."""
    shs = float(torch.dot(x, fx))
    return math.sqrt(2.0 * max_kl / shs) if shs > 0 and math.isfinite(shs) else 0.0


@dataclass(frozen=True)
class LineSearch:
    """The outcome of `line_search`."""

    accepted: bool
    frac: float
    """Fraction of the full step taken (0.0 when none was accepted)."""
    gain: float
    """Surrogate improvement of the accepted step (0.0 when none)."""
    kl: float
    """Measured mean KL of the accepted step (of the last one tried when none was accepted)."""
    tries: int


def line_search(
    evaluate: Callable[[float], tuple[float, float]],
    expected_gain: float,
    max_kl: float,
    backtrack: float = 0.5,
    max_backtracks: int = 10,
    accept_ratio: float = 0.1,
) -> LineSearch:
    """Backtracking on the step fraction: `evaluate(frac)` applies frac * full step and returns
    (surrogate gain over theta_old, mean KL(pi_old || pi_new)); `expected_gain` = g . full step
    (the linear model's gain of the full step). The first fraction (1, backtrack, backtrack^2,
    ...) whose KL <= max_kl and whose gain is > 0 and >= accept_ratio * frac * expected_gain is
    accepted; the caller must leave theta_old in place when none is (accepted False)."""
    kl = float("nan")
    for k in range(max_backtracks + 1):
        frac = backtrack**k
        gain, kl = evaluate(frac)
        if math.isfinite(gain) and math.isfinite(kl) and kl <= max_kl and gain > 0:
            if gain >= accept_ratio * frac * expected_gain:
                return LineSearch(True, frac, gain, kl, k + 1)
    return LineSearch(False, 0.0, 0.0, kl, max_backtracks + 1)


def flat(tensors: list[Tensor]) -> Tensor:
    """One float32 vector of every tensor, in order [sum numel]."""
    return torch.cat([t.reshape(-1).float() for t in tensors])


def unflat(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    """`vector` cut back into tensors shaped (and typed) like `like`."""
    out, i = [], 0
    for t in like:
        out.append(vector[i : i + t.numel()].view_as(t).to(t.dtype))
        i += t.numel()
    return out
