"""KL(policy || reference) per token, and the controllers that set its coefficient.

Estimators (J. Schulman, "Approximating KL Divergence", 2020), with p = policy (the
sampling distribution) and q = reference, r = q/p evaluated at the sampled token:
    k1 = log p - log q                 unbiased, high variance, can be negative
    k2 = 0.5 * (log p - log q)^2       biased, low variance, >= 0
    k3 = r - log r - 1                 unbiased, low variance, >= 0
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token KL estimate. logprobs, ref_logprobs: [B, T] -> [B, T] fp32 (unmasked)."""
    log_ratio = logprobs.float() - ref_logprobs.float()  # log p - log q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        neg = -log_ratio  # log q - log p = log r
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1', 'k2' or 'k3')")


class KLController(Protocol):
    value: float

    def update(self, current_kl: float, n_samples: int) -> None: ...
    def state_dict(self) -> dict[str, float]: ...
    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """A constant coefficient; `update` is a no-op."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Steer measured KL toward `target` (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    error = clip(current / target - 1, -0.2, 0.2); value *= 1 + error * n_samples / horizon.
    The clip bounds the change per update, so one noisy KL estimate cannot blow up the
    coefficient. Multiplicative: a coefficient of 0 stays 0.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if target <= 0:
            raise ValueError(f"adaptive KL target must be > 0 (got {target})")
        if horizon <= 0:
            raise ValueError(f"adaptive KL horizon must be > 0 (got {horizon})")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


def make_kl_controller(coef: float, target: float | None, horizon: int) -> FixedKLController | AdaptiveKLController:
    """Adaptive when a target is set, fixed otherwise (matches `LearnerConfig.kl`)."""
    if target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, target, horizon)
