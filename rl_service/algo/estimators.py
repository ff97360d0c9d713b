"""Every advantage estimator, GAE included, registered by name behind one signature.

    estimator = get_advantage_estimator("grpo")   # ValueError naming the known ones otherwise
    advantages, returns, metrics = estimator(inputs, config)

`inputs` (AdvantageInputs) holds the batch's rewards as they come: the scalar score of each
sample, the per-token KL to charge in the reward, per-token rewards. Each estimator shapes
them its own way (GAE: per-token rewards into a discounted scan; the group baselines: one
sequence-level score per sample). `config` is the estimator's own config variant, read by
attribute (GAE reads `gamma`, `lam`, `whiten`; the group baselines read nothing).

A new estimator is a function `(inputs, config) -> AdvantageResult` decorated with
@register_advantage("name"); the learner finds it by the config's `advantage.type`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from torch import Tensor

from rl_service.algo.advantages import GROUP_BASELINES, broadcast_to_tokens, gae, grouped_advantages, reward_metrics
from rl_service.algo.losses import explained_variance
from rl_service.algo.masking import masked_sum, masked_whiten
from rl_service.algo.rewards import token_level_rewards


@dataclass(frozen=True)
class AdvantageInputs:
    """One batch's rewards. B = samples, T = response grid columns; tensors on one device."""

    scores: Tensor  # [B] scalar reward of each sample
    mask: Tensor  # [B, T] response tokens (0/1, right padded)
    groups: Sequence[Sequence[int]]  # row indices of each prompt's samples (short when samples were dropped)
    values: Tensor | None = None  # [B, T] critic's V(s_t); estimators with a critic need it
    reward_kl: Tensor | None = None  # [B, T] KL to the reference charged in the reward; None: not in the reward
    kl_coef: float = 0.0  # weight of reward_kl
    token_rewards: Tensor | None = None  # [B, T] per-token rewards (on-policy distillation) or None


class AdvantageResult(NamedTuple):
    advantages: Tensor  # [B, T] fp32, 0 off the mask
    returns: Tensor | None  # [B, T] the critic's regression targets, None without a critic
    metrics: dict[str, float]  # reward/* (always), value/explained_var (with a critic)


AdvantageEstimator = Callable[[AdvantageInputs, Any], AdvantageResult]

_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make `fn(inputs, config) -> AdvantageResult` the estimator called `name`."""

    def register(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = fn
        return fn

    return register


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name`; ValueError listing the known names otherwise."""
    try:
        return _ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r} (known: {', '.join(advantage_names())})") from None


def advantage_names() -> tuple[str, ...]:
    """Names of the registered estimators, sorted."""
    return tuple(sorted(_ESTIMATORS))


class GAEParams(Protocol):
    """What the gae estimator reads from its config (GAEConfig)."""

    gamma: float  # discount
    lam: float  # GAE lambda
    whiten: bool  # whiten the advantages over the batch


@register_advantage("gae")
def gae_advantages(inputs: AdvantageInputs, config: GAEParams) -> AdvantageResult:
    """PPO's token-level GAE with a critic: the score on each row's last token, minus
    kl_coef * reward_kl and plus token_rewards on every token, scanned with gamma and lam.
    Whitened over the whole batch when config.whiten (after explained_var is measured)."""
    if inputs.values is None:
        raise ValueError("the gae estimator needs the critic's values")
    mask = inputs.mask
    rewards = token_level_rewards(inputs.scores, mask, inputs.reward_kl, inputs.kl_coef, inputs.token_rewards)
    adv, returns = gae(rewards, inputs.values, mask, config.gamma, config.lam)
    metrics = reward_metrics(inputs.scores, inputs.groups)
    metrics["value/explained_var"] = explained_variance(inputs.values, returns, mask)
    if config.whiten:
        adv = masked_whiten(adv, mask)
    return AdvantageResult(adv, returns, metrics)


def _group_advantages(inputs: AdvantageInputs, config: Any = None, *, baseline: str) -> AdvantageResult:
    """A critic-free group baseline (GROUP_BASELINES[baseline]) on each sample's score, broadcast
    to its tokens. The group variants carry no fields: `config` is not read."""
    # The KL in the reward of a critic-free estimator is a sequence-level penalty on the score.
    scores = inputs.scores
    if inputs.reward_kl is not None:
        scores = scores - inputs.kl_coef * masked_sum(inputs.reward_kl, inputs.mask, dim=-1)
    # No batch whitening: the baseline sets the scale (dr_grpo deliberately does not divide
    # by a std; re-centring would move zero-signal groups off 0).
    adv = broadcast_to_tokens(grouped_advantages(scores, inputs.groups, baseline), inputs.mask)
    if inputs.token_rewards is not None:
        # discount 0: a token is credited with its own reward only, as in on-policy distillation
        adv = adv + inputs.token_rewards * inputs.mask
    # reward/* describe the rewards as scored, before any KL shaping
    return AdvantageResult(adv, None, reward_metrics(inputs.scores, inputs.groups))


# Every group baseline (grpo, dr_grpo, rloo, reinforce_pp: algo/advantages.py) is an estimator
# under its own name.
for _name in GROUP_BASELINES:
    register_advantage(_name)(partial(_group_advantages, baseline=_name))
