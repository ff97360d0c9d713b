"""rl_service.algo.kl: the three estimators and the KL coefficient controllers."""

import math

import pytest
import torch

from rl_service.algo.kl import AdaptiveKLController, FixedKLController, kl_penalty, make_kl_controller


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_matches_loop(estimator):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=gen) * 3
    logq = -torch.rand(4, 6, generator=gen) * 3
    out = kl_penalty(logp, logq, estimator)
    assert out.shape == (4, 6) and out.dtype == torch.float32
    pl, ql = logp.tolist(), logq.tolist()
    for b in range(4):
        for t in range(6):
            d = pl[b][t] - ql[b][t]
            want = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1}[estimator]
            assert out[b, t].item() == pytest.approx(want, abs=1e-5)
    if estimator != "k1":
        assert (out >= 0).all()


def test_kl_penalty_hand_computed():
    # p = 0.5, q = 0.25 at the sampled token: log p - log q = ln 2 = 0.693147
    # k1 = 0.693147; k2 = 0.5 * 0.693147^2 = 0.240227; k3 = r - ln r - 1 with r = q/p = 0.5:
    # 0.5 + 0.693147 - 1 = 0.193147
    logp, logq = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_penalty(logp, logq, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_penalty(logp, logq, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_penalty(logp, logq, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, logq, "k4")


def test_k1_and_k3_are_unbiased_for_samples_from_the_policy():
    # Exact KL(p || q) of two 4-way categoricals vs the Monte Carlo mean over samples from p.
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    exact = float((p * (p / q).log()).sum())  # 0.456
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, logq = p.log()[idx].unsqueeze(0), q.log()[idx].unsqueeze(0)
    for est in ("k1", "k3"):
        assert kl_penalty(logp, logq, est).mean().item() == pytest.approx(exact, abs=0.01)


def test_fixed_controller_never_moves():
    c = FixedKLController(0.05)
    c.update(current_kl=100.0, n_samples=1000)
    assert c.value == 0.05
    c2 = FixedKLController(0.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_controller_direction_clip_and_state():
    # KL above target: error = clip(10/1 - 1, -0.2, 0.2) = 0.2; value = 0.1 * (1 + 0.2 * 100 / 1000) = 0.102
    c = AdaptiveKLController(0.1, target=1.0, horizon=1000)
    c.update(current_kl=10.0, n_samples=100)
    assert c.value == pytest.approx(0.102)
    # slightly below target: error = 0.9 - 1 = -0.1; value = 0.102 * (1 - 0.1 * 100 / 1000) = 0.10098
    c.update(current_kl=0.9, n_samples=100)
    assert c.value == pytest.approx(0.10098)
    # far below: clipped at -0.2 -> 0.10098 * 0.98
    c.update(current_kl=0.0, n_samples=100)
    assert c.value == pytest.approx(0.10098 * 0.98)
    # repeated high KL keeps pushing up, repeated low KL keeps pushing down
    up, down = AdaptiveKLController(0.1, 0.5, 100), AdaptiveKLController(0.1, 0.5, 100)
    for _ in range(5):
        before_up, before_down = up.value, down.value
        up.update(0.8, 10)
        down.update(0.2, 10)
        assert up.value > before_up and down.value < before_down
    restored = AdaptiveKLController(1.0, 9.0, 9)
    restored.load_state_dict(up.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (up.value, 0.5, 100)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_make_kl_controller_picks_by_target():
    assert isinstance(make_kl_controller(0.1, None, 100), FixedKLController)
    c = make_kl_controller(0.1, 0.05, 100)
    assert isinstance(c, AdaptiveKLController) and c.value == 0.1 and c.target == 0.05
