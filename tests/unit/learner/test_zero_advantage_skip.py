"""learner.skip_zero_advantage: the PPO update without the forward/backward of zero-advantage
samples equals the full update (their tokens still in the normaliser), on one process.

SGD and no effective clipping, so the normaliser shows in the weights one for one (AdamW and a
clipped norm are both blind to a constant gradient scale). The 2-rank FSDP version is
tests/integration/test_fsdp_learner.py::test_zero_advantage_skip_leaves_the_update_unchanged.
"""

from __future__ import annotations

import pytest
import torch

from rl_service.config import LearnerConfig
from rl_service.learner.forward import Models, policy_logprobs
from rl_service.learner.prepare import RolloutTensors
from rl_service.learner.update import ppo_update, zero_advantage_skip
from tests.unit.conftest import tiny_llama

N, T = 12, 11
ZERO_ROWS = [0, 1, 2, 3, 8, 9, 10, 11]  # two of three "groups" of 4 carry no signal


def _setup():
    torch.manual_seed(0)
    policy = tiny_llama()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (N, T), generator=gen)
    lengths = torch.randint(6, T + 1, (N,), generator=gen)
    am = (torch.arange(T)[None] < lengths[:, None]).long()
    mask = torch.zeros(N, T - 1)
    for b in range(N):
        mask[b, 3 : int(lengths[b]) - 1] = 1.0  # responses of different lengths
    with torch.no_grad():
        old, _ = policy_logprobs(policy, ids, am)
    adv = torch.randn(N, 1, generator=gen).expand(N, T - 1) * mask
    adv[ZERO_ROWS] = 0.0
    return policy, RolloutTensors(
        ids, am, mask, old + 0.05 * torch.randn(N, T - 1, generator=gen), None, adv, None, None
    )


def _update(skip: bool, **overrides) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    policy, data = _setup()
    rows = []
    hook = policy.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    cfg = LearnerConfig(advantage="grpo", skip_zero_advantage=skip, max_grad_norm=1e9, micro_batch_size=3, **overrides)
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    m = ppo_update(Models(policy, None, None, torch.device("cpu"), 0, 1), opt, None, data, cfg, kl_coef=0.0, seed=0)
    hook.remove()
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}, m, sum(rows)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("num_minibatches", [1, 3])
def test_skipping_zero_advantage_samples_leaves_the_weights_unchanged(loss_agg, num_minibatches):
    kw = dict(loss_agg=loss_agg, num_minibatches=num_minibatches, ppo_epochs=2)
    full, m_full, rows_full = _update(False, **kw)
    lean, m_lean, rows_lean = _update(True, **kw)
    initial, _ = _setup()
    moved = max(float((full[k] - initial.state_dict()[k]).abs().max()) for k in full)
    diff = max(float((full[k] - lean[k]).abs().max()) for k in full)
    assert moved > 1e-3, "the update moved the weights"
    assert diff < 1e-6, diff
    assert m_full["train/skipped_zero_adv_samples"] == 0 and m_lean["train/skipped_zero_adv_samples"] == len(ZERO_ROWS)
    _, data = _setup()
    assert m_lean["train/skipped_zero_adv_tokens"] == float(data.mask[ZERO_ROWS].sum())
    # The skipped rows never reached the model (a minibatch of only zero rows runs one dummy row).
    assert rows_full == 2 * N and rows_lean < rows_full
    assert m_lean["loss/policy"] == pytest.approx(m_full["loss/policy"], abs=1e-6)
    assert m_lean["train/optimizer_steps"] == m_full["train/optimizer_steps"] == 2 * num_minibatches


@pytest.mark.parametrize(
    "overrides",
    [
        {"entropy_coef": 0.01},
        {"target_kl": 0.1},
        {"skip_zero_advantage": False},
    ],
)
def test_skip_only_where_exact(overrides):
    assert zero_advantage_skip(LearnerConfig(advantage="grpo"), has_critic=False, kl_in_loss=False)
    assert not zero_advantage_skip(LearnerConfig(advantage="grpo", **overrides), has_critic=False, kl_in_loss=False)
    assert not zero_advantage_skip(LearnerConfig(advantage="grpo"), has_critic=True, kl_in_loss=False)
    assert not zero_advantage_skip(LearnerConfig(advantage="grpo"), has_critic=False, kl_in_loss=True)
    policy, data = _setup()
    cfg = LearnerConfig(advantage="grpo", **overrides)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    m = ppo_update(Models(policy, None, None, torch.device("cpu"), 0, 1), opt, None, data, cfg, kl_coef=0.0, seed=0)
    assert m["train/skipped_zero_adv_samples"] == 0


def test_the_default_kl_hard_limit_keeps_skipping_on():
    """The hard limit is on by default; it only reads the KL of the samples that ran."""
    assert LearnerConfig(advantage="grpo").kl_hard_limit == 1.0
    assert zero_advantage_skip(LearnerConfig(advantage="grpo"), has_critic=False, kl_in_loss=False)
    assert zero_advantage_skip(LearnerConfig(advantage="grpo", kl_hard_limit=None), has_critic=False, kl_in_loss=False)
