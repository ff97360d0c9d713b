"""rl_service.algo.estimators: the one registry of advantage estimators, against plain-Python loops.

Each estimator gets the raw batch (scores, per-token KL charged in the reward, per-token rewards,
groups that may be short) and must shape it as the learner always has: GAE per token, the group
baselines per sequence; reward/* metrics describe the scores before shaping.
"""

import statistics
import typing
from types import SimpleNamespace

import pytest
import torch

from rl_service.algo import estimators
from rl_service.algo.advantages import GROUP_BASELINES
from rl_service.algo.estimators import (
    AdvantageInputs,
    AdvantageResult,
    advantage_names,
    get_advantage_estimator,
    register_advantage,
)
from rl_service.config import GroupAdvantageConfig

from .test_advantages import loop_gae, loop_group, right_padded_mask

GROUPS = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17]]  # two short groups
B, T = 18, 7


def _inputs(kl_coef=0.3, with_token_rewards=True, with_values=True):
    gen = torch.Generator().manual_seed(3)
    scores = (torch.rand(B, generator=gen) < 0.5).float()
    scores[7:11] = 1.0  # equal rewards: no signal (until the KL shapes them apart)
    scores[15:18] = 0.0
    mask = right_padded_mask(B, T, gen)
    return AdvantageInputs(
        scores=scores,
        mask=mask,
        groups=GROUPS,
        values=torch.randn(B, T, generator=gen) if with_values else None,
        reward_kl=torch.rand(B, T, generator=gen) if kl_coef else None,
        kl_coef=kl_coef,
        token_rewards=0.1 * torch.randn(B, T, generator=gen) if with_token_rewards else None,
    )


def loop_reward_metrics(scores, groups):
    zero = [max(scores[i] for i in g) == min(scores[i] for i in g) for g in groups]
    return {
        "reward/mean": sum(scores) / len(scores),
        "reward/std": statistics.stdev(scores),
        "reward/frac_zero_std": sum(zero) / len(groups),
    }


def loop_token_rewards(inp):
    """-coef * kl and the token reward on every masked token, the score on the last one."""
    s, m = inp.scores.tolist(), inp.mask.tolist()
    kl = inp.reward_kl.tolist() if inp.reward_kl is not None else [[0.0] * T for _ in range(B)]
    tr = inp.token_rewards.tolist() if inp.token_rewards is not None else [[0.0] * T for _ in range(B)]
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        on = [t for t in range(T) if m[b][t]]
        for t in on:
            out[b][t] = -inp.kl_coef * kl[b][t] + tr[b][t]
        if on:
            out[b][on[-1]] += s[b]
    return out


def loop_whiten(x, mask):
    vals = [x[b][t] for b in range(B) for t in range(T) if mask[b][t]]
    mean, var = sum(vals) / len(vals), statistics.variance(vals)
    return [[(x[b][t] - mean) / (var + 1e-8) ** 0.5 if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]


def loop_explained_var(values, returns, mask):
    on = [(b, t) for b in range(B) for t in range(T) if mask[b][t]]
    ret = [returns[b][t] for b, t in on]
    resid = [returns[b][t] - values[b][t] for b, t in on]
    return 1.0 - statistics.variance(resid) / statistics.variance(ret)


def assert_metrics(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        assert isinstance(got[k], float) and got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_one_registry_holds_every_estimator_the_config_names():
    config_types = typing.get_args(GroupAdvantageConfig.model_fields["type"].annotation)
    assert advantage_names() == tuple(sorted({"gae", *config_types})) == tuple(sorted({"gae", *GROUP_BASELINES}))
    for name in advantage_names():
        assert callable(get_advantage_estimator(name))


def test_unknown_name_fails_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo' \(known: dr_grpo, gae, grpo, "):
        get_advantage_estimator("ppo")


def test_register_a_new_estimator_by_name(monkeypatch):
    monkeypatch.setattr(estimators, "_ESTIMATORS", dict(estimators._ESTIMATORS))

    @register_advantage("zero")
    def zero(inputs, config):
        return AdvantageResult(torch.zeros_like(inputs.mask), None, {})

    assert get_advantage_estimator("zero") is zero and "zero" in advantage_names()
    with pytest.raises(ValueError, match="'gae' is already registered"):
        register_advantage("gae")(zero)


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("kl_coef,with_token_rewards", [(0.3, True), (0.0, False)])
def test_gae_matches_loop(whiten, kl_coef, with_token_rewards):
    inp = _inputs(kl_coef, with_token_rewards)
    config = SimpleNamespace(gamma=0.9, lam=0.8, whiten=whiten)
    adv, returns, metrics = get_advantage_estimator("gae")(inp, config)
    mask, values = inp.mask.tolist(), inp.values.tolist()
    want_adv, want_ret = loop_gae(loop_token_rewards(inp), values, mask, 0.9, 0.8)
    torch.testing.assert_close(returns, torch.tensor(want_ret), atol=1e-5, rtol=1e-5)
    if whiten:
        want_adv = loop_whiten(want_adv, mask)
    torch.testing.assert_close(adv, torch.tensor(want_adv), atol=1e-5, rtol=1e-5)
    want = loop_reward_metrics(inp.scores.tolist(), GROUPS)
    want["value/explained_var"] = loop_explained_var(values, want_ret, mask)
    assert_metrics(metrics, want)


def test_gae_needs_the_critic():
    with pytest.raises(ValueError, match="needs the critic's values"):
        get_advantage_estimator("gae")(_inputs(with_values=False), SimpleNamespace(gamma=1.0, lam=1.0, whiten=True))


@pytest.mark.parametrize("name", sorted(GROUP_BASELINES))
@pytest.mark.parametrize("kl_coef,with_token_rewards", [(0.3, True), (0.0, False)])
def test_group_estimators_match_loop(name, kl_coef, with_token_rewards):
    inp = _inputs(kl_coef, with_token_rewards, with_values=False)
    adv, returns, metrics = get_advantage_estimator(name)(inp, GroupAdvantageConfig(type=name))
    assert returns is None
    s, mask = inp.scores.tolist(), inp.mask.tolist()
    if inp.reward_kl is not None:  # the KL charged per sequence, on the score
        kl = inp.reward_kl.tolist()
        s = [s[b] - kl_coef * sum(kl[b][t] for t in range(T) if mask[b][t]) for b in range(B)]
    seq_adv = [0.0] * B
    for size in sorted({len(g) for g in GROUPS}):  # the baseline runs once per group size
        rows = [i for g in GROUPS if len(g) == size for i in g]
        for i, a in zip(rows, loop_group([s[i] for i in rows], size, name, 1e-6)):
            seq_adv[i] = a
    tr = inp.token_rewards.tolist() if with_token_rewards else [[0.0] * T for _ in range(B)]
    want = [[seq_adv[b] + tr[b][t] if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]
    torch.testing.assert_close(adv, torch.tensor(want), atol=1e-5, rtol=1e-5)
    # reward/* describe the scores as scored: groups 2 and 4 have equal rewards even when the KL
    # shaped them apart
    assert_metrics(metrics, loop_reward_metrics(inp.scores.tolist(), GROUPS))
    assert metrics["reward/frac_zero_std"] >= 2 / 5
