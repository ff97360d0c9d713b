"""rl_service.algo.rewards: per-token rewards = KL shaping + score on the last token."""

import pytest
import torch

from rl_service.algo.rewards import token_level_rewards


def right_padded_mask(B, T, gen):
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 0
    return (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()


@pytest.mark.parametrize("with_kl", [True, False])
def test_token_level_rewards_match_loop(with_kl):
    gen = torch.Generator().manual_seed(0)
    B, T, coef = 6, 7, 0.3
    scores = torch.randn(B, generator=gen)
    mask = right_padded_mask(B, T, gen)
    kl = torch.randn(B, T, generator=gen) if with_kl else None
    out = token_level_rewards(scores, mask, kl, coef)
    assert out.shape == (B, T) and out.dtype == torch.float32
    ml, sl = mask.tolist(), scores.tolist()
    kll = kl.tolist() if with_kl else None
    for b in range(B):
        last = max((t for t in range(T) if ml[b][t]), default=None)
        for t in range(T):
            want = 0.0
            if ml[b][t]:
                want = -coef * kll[b][t] if with_kl else 0.0
                if t == last:
                    want += sl[b]
            assert out[b, t].item() == pytest.approx(want, abs=1e-6)


def test_token_level_rewards_hand_computed():
    # row 0: 3 tokens, score 1.0, kl [0.1, 0.2, 0.3], coef 0.5 -> [-0.05, -0.1, -0.15 + 1.0 = 0.85, 0]
    # row 1: 1 token, score -2.0, kl 0.4 -> [-0.2 - 2.0 = -2.2, 0, 0, 0] (padding kl ignored)
    scores = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kl = torch.tensor([[0.1, 0.2, 0.3, 5.0], [0.4, 5.0, 5.0, 5.0]])
    out = token_level_rewards(scores, mask, kl, 0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.05, -0.1, 0.85, 0.0], [-2.2, 0.0, 0.0, 0.0]]))
    # an empty row gets nothing at all (its score has no token to land on)
    empty = token_level_rewards(scores, torch.zeros(2, 4), None, 0.5)
    assert torch.equal(empty, torch.zeros(2, 4))
