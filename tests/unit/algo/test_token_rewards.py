"""Per-token rewards (on-policy distillation): the reward tensor against a plain loop, and the
alignment of ScoredBatch.token_rewards with the learner's response mask."""

import pytest
import torch

from rl_service.algo.advantages import gae
from rl_service.algo.rewards import token_level_rewards
from rl_service.learner.batching import batch_token_rewards, engine_logprobs, pad_samples
from rl_service.types import Sample, ScoredBatch


def _mask(B, T, gen):
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 0
    return (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()


@pytest.mark.parametrize("with_kl", [True, False])
def test_token_rewards_match_loop(with_kl):
    gen = torch.Generator().manual_seed(1)
    B, T, coef = 5, 6, 0.2
    scores, mask = torch.randn(B, generator=gen), _mask(B, T, gen)
    kl = torch.randn(B, T, generator=gen) if with_kl else None
    tok = torch.randn(B, T, generator=gen)
    tok[mask == 0] = float("nan")  # padding may hold anything: it must not leak in
    out = token_level_rewards(scores, mask, kl, coef, tok)
    for b in range(B):
        last = max((t for t in range(T) if mask[b, t]), default=None)
        for t in range(T):
            want = 0.0
            if mask[b, t]:
                want = tok[b, t].item() - (coef * kl[b, t].item() if with_kl else 0.0)
                want += scores[b].item() if t == last else 0.0
            assert out[b, t].item() == pytest.approx(want, abs=1e-6)


def test_token_rewards_hand_computed_and_gae():
    # 3 response tokens, teacher - student = [-0.5, -1.0, 0.0], score 1 on the last token;
    # gamma = lam = 1 and zero values: the advantage of token t is the sum of rewards from t on.
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    tok = torch.tensor([[-0.5, -1.0, 0.0, 9.0]])
    r = token_level_rewards(torch.tensor([1.0]), mask, None, 0.0, tok)
    torch.testing.assert_close(r, torch.tensor([[-0.5, -1.0, 1.0, 0.0]]))
    adv, _ = gae(r, torch.zeros(1, 4), mask, 1.0, 1.0)
    torch.testing.assert_close(adv * mask, torch.tensor([[-0.5, 0.0, 1.0, 0.0]]))


def _sample(i, prompt, resp):
    return Sample(
        sample_id=f"{i}/0",
        prompt_id=i,
        prompt_text="p",
        prompt_ids=tuple(prompt),
        response_ids=tuple(resp),
        response_logprobs=tuple(-0.1 * (k + 1) for k in range(len(resp))),
        response_text="r",
        policy_version=0,
        finish_reason="stop",
    )


def _batch(bid, samples, token_rewards):
    return ScoredBatch(
        batch_id=bid,
        samples=tuple(samples),
        rewards=(0.0,) * len(samples),
        dropped=(),
        policy_version=0,
        generate_s=0.0,
        reward_s=0.0,
        token_rewards=token_rewards,
    )


def test_batch_token_rewards_align_with_response_mask():
    s = [_sample(0, [1, 5], [7, 8, 2]), _sample(1, [1, 5, 6, 4], [9]), _sample(2, [1], [3, 2])]
    b1 = _batch(0, s[:2], ((0.1, 0.2, 0.3), (0.4,)))
    b2 = _batch(1, s[2:], None)  # a batch without token rewards contributes zeros
    padded = pad_samples(s, 0)
    T = padded["input_ids"].shape[1]
    out = batch_token_rewards([b1, b2], T)
    assert out.shape == (3, T - 1)
    assert torch.equal(out != 0, (padded["response_mask"] > 0) & torch.tensor([[True], [True], [False]]))
    # same alignment as the engine logprobs of the same tokens
    lp = engine_logprobs(s, T)
    torch.testing.assert_close(out[0][lp[0] != 0], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(out[1][lp[1] != 0], torch.tensor([0.4]))
    assert batch_token_rewards([b2], T) is None
    with pytest.raises(ValueError, match="token rewards for"):
        batch_token_rewards([_batch(0, s[:1], ((0.1,),))], T)
