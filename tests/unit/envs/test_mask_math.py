"""Multi-turn samples in the learner: environment tokens inside a response are context only.

Checked against plain-loop references: GAE over a response with holes equals GAE over the
policy tokens alone (env tokens are part of the transition, not steps), the terminal reward
lands on the last generated token, and the policy loss ignores whatever sits on env tokens.
"""

import pytest
import torch

from rl_service.algo.advantages import gae
from rl_service.algo.losses import ppo_policy_loss
from rl_service.algo.rewards import token_level_rewards
from rl_service.learner.batching import engine_logprobs, pad_samples
from rl_service.types import Sample


def sample(sid, prompt, response, mask=None, logprobs=None):
    return Sample(
        sample_id=sid,
        prompt_id=int(sid.split("/")[0]),
        prompt_text="p",
        prompt_ids=tuple(prompt),
        response_ids=tuple(response),
        response_logprobs=tuple(logprobs or [-0.1] * len(response)),
        response_text="r",
        policy_version=0,
        finish_reason="stop",
        metadata={},
        response_mask=None if mask is None else tuple(mask),
    )


def test_pad_samples_applies_the_sample_mask():
    multi = sample(
        "0/0", [1, 5], [7, 2, 9, 9, 8, 2], mask=[1, 1, 0, 0, 1, 1], logprobs=[-0.3, -0.2, 0.0, 0.0, -0.4, -0.1]
    )
    plain = sample("1/0", [1, 5, 6], [7, 2])
    out = pad_samples([multi, plain], pad_id=0)
    # targets t+1: row 0 = prompt 2 tokens -> response targets at t = 1..6
    assert out["response_mask"][0].tolist() == [0, 1, 1, 0, 0, 1, 1]
    assert out["response_mask"][1].tolist() == [0, 0, 1, 1, 0, 0, 0]
    lp = engine_logprobs([multi, plain], out["input_ids"].shape[1])
    assert lp[0].tolist() == pytest.approx([0, -0.3, -0.2, 0, 0, -0.4, -0.1])
    with pytest.raises(ValueError, match="response_mask"):
        pad_samples([sample("2/0", [1], [4, 5], mask=[1])], pad_id=0)


def gae_reference(rewards, values, mask, gamma, lam):
    """Plain loop over the policy tokens of ONE row only (env tokens removed), scattered back."""
    idx = [t for t in range(len(mask)) if mask[t]]
    adv = [0.0] * len(mask)
    ret = [0.0] * len(mask)
    next_v, next_a = 0.0, 0.0
    for t in reversed(idx):
        delta = rewards[t] + gamma * next_v - values[t]
        next_a = delta + gamma * lam * next_a
        next_v = values[t]
        adv[t], ret[t] = next_a, next_a + values[t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_with_env_holes_matches_policy_only_loop(gamma, lam):
    torch.manual_seed(0)
    # Two turns with env text between, then right padding; a second row with no holes.
    mask = torch.tensor([[0, 1, 1, 0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    values = torch.randn(2, 10)
    kl = torch.rand(2, 10)
    scores = torch.tensor([1.0, -0.5])
    rewards = token_level_rewards(scores, mask, kl, kl_coef=0.1)
    # The score sits on the last generated token, not on env text or padding.
    assert rewards[0, 7] == pytest.approx(1.0 - 0.1 * kl[0, 7].item())
    assert rewards[0, 3:6].abs().sum() == 0
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b in range(2):
        ref_adv, ref_ret = gae_reference(rewards[b].tolist(), values[b].tolist(), mask[b].tolist(), gamma, lam)
        assert adv[b].tolist() == pytest.approx(ref_adv, abs=1e-6)
        assert ret[b].tolist() == pytest.approx(ref_ret, abs=1e-6)
    # Garbage values on env tokens change nothing.
    noisy = values.clone()
    noisy[mask == 0] = 1e6
    adv2, ret2 = gae(rewards, noisy, mask, gamma, lam)
    assert torch.allclose(adv, adv2) and torch.allclose(ret, ret2)


def test_policy_loss_and_gradient_ignore_env_tokens():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]], dtype=torch.float32)
    new = torch.randn(1, 6, requires_grad=True)
    old, adv = torch.randn(1, 6), torch.randn(1, 6)
    loss, _ = ppo_policy_loss(new, old, adv, mask, 0.2, "token_mean")
    loss.backward()
    assert new.grad[0, 2:4].abs().sum() == 0 and new.grad[0, 5] == 0
    assert new.grad[0, [0, 1, 4]].abs().sum() > 0
    # Same loss as the masked tokens alone (token_mean over 3 policy tokens).
    keep = [0, 1, 4]
    ref, _ = ppo_policy_loss(new.detach()[:, keep], old[:, keep], adv[:, keep], torch.ones(1, 3), 0.2, "token_mean")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    # Anything on env tokens (e.g. logprob 0 from the rollout, huge advantages) is ignored.
    old2, adv2 = old.clone(), adv.clone()
    old2[0, 2:4], adv2[0, 2:4] = 0.0, 1e9
    loss2, _ = ppo_policy_loss(new.detach(), old2, adv2, mask, 0.2, "token_mean")
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
