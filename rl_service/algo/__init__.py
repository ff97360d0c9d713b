"""Pure-torch RL math: masking, logprobs, KL, rewards, advantages (estimators by name), PPO losses.

Layering rule: this package imports torch and the standard library only (no ray, vllm,
transformers, nor other rl_service modules); tests/unit/test_layering.py checks it.
"""

from rl_service.algo.advantages import (
    GROUP_BASELINES,
    broadcast_to_tokens,
    gae,
    group_advantages,
    grouped_advantages,
    reward_metrics,
)
from rl_service.algo.estimators import (
    AdvantageInputs,
    AdvantageResult,
    advantage_names,
    get_advantage_estimator,
    register_advantage,
)
from rl_service.algo.kl import AdaptiveKLController, FixedKLController, KLController, kl_penalty, make_kl_controller
from rl_service.algo.logprobs import entropy_from_logits, token_logprobs
from rl_service.algo.losses import entropy_bonus, explained_variance, ppo_policy_loss, value_loss
from rl_service.algo.masking import (
    aggregate_loss,
    loss_denom,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    zero_signal_rows,
)
from rl_service.algo.preference import bradley_terry_loss, dpo_loss, sequence_logprobs, smoothed_pair_nll
from rl_service.algo.rewards import last_token_index, token_level_rewards

__all__ = [
    "AdaptiveKLController",
    "AdvantageInputs",
    "AdvantageResult",
    "GROUP_BASELINES",
    "FixedKLController",
    "KLController",
    "advantage_names",
    "aggregate_loss",
    "broadcast_to_tokens",
    "entropy_bonus",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "get_advantage_estimator",
    "group_advantages",
    "grouped_advantages",
    "kl_penalty",
    "last_token_index",
    "loss_denom",
    "make_kl_controller",
    "masked_count",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "register_advantage",
    "reward_metrics",
    "token_level_rewards",
    "token_logprobs",
    "value_loss",
    "zero_signal_rows",
    "bradley_terry_loss",
    "dpo_loss",
    "sequence_logprobs",
    "smoothed_pair_nll",
]
