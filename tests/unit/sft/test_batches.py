"""SFT data order and tensors: the loss mask covers exactly the response tokens, checked against
a plain per-example cross-entropy loop on a real (tiny) model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from rl_service.algo.masking import masked_sum
from rl_service.config import TinyModelConfig
from rl_service.learner.forward import policy_logprobs
from rl_service.models.tiny import build_tiny_model
from rl_service.models.tokenizer import build_tokenizer
from rl_service.sft.batches import batch_order, response_tokens, sft_tensors


@dataclass(frozen=True)
class Ex:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


def test_batch_order_is_a_seeded_shuffle_per_epoch():
    stream = batch_order(10, 4, seed=3)
    batches = [next(stream) for _ in range(5)]  # 20 rows = 2 epochs exactly
    rows = [i for _, b in batches for i in b]
    assert all(len(b) == 4 for _, b in batches)
    assert sorted(rows[:10]) == list(range(10)) == sorted(rows[10:])  # every example once per epoch
    assert rows[:10] != rows[10:]  # a new order each epoch
    assert [e for e, _ in batches] == [0, 0, 0, 1, 1]  # batch 2 straddles: its first row is epoch 0
    again = batch_order(10, 4, seed=3)
    assert [next(again) for _ in range(5)] == batches  # a pure function of the seed
    other = batch_order(10, 4, seed=4)
    assert [next(other) for _ in range(5)] != batches
    big = batch_order(3, 7, seed=0)  # batch larger than the data: several epochs in one batch
    epoch, idx = next(big)
    assert epoch == 0 and len(idx) == 7 and sorted(idx[:3]) == [0, 1, 2]
    with pytest.raises(ValueError, match="no SFT examples"):
        next(batch_order(0, 4, seed=0))


def test_mask_marks_response_tokens_on_the_shifted_grid():
    ids, attention, mask = sft_tensors([Ex((5, 6, 7), (8, 9)), Ex((5,), (4, 3, 2))], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 0]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # column t predicts token t+1: the first row's targets 8, 9 sit at columns 2, 3
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert response_tokens([Ex((5, 6, 7), (8, 9)), Ex((5,), (4, 3, 2))]) == 5
    with pytest.raises(ValueError, match="empty prompt"):
        sft_tensors([Ex((), (1,))], pad_id=0)


@torch.no_grad()
def test_masked_loss_equals_plain_cross_entropy_over_responses(one_torch_thread):
    tok = build_tokenizer(["12+34=46", "ab cd", "hello world"], vocab_size=300)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok)
    pairs = [("12+34=", "46"), ("hello", " world"), ("a", "b cd ab")]
    examples = [
        Ex(tuple(tok(p).input_ids), tuple(tok(r, add_special_tokens=False).input_ids) + (tok.eos_token_id,))
        for p, r in pairs
    ]
    ids, attention, mask = sft_tensors(examples, tok.pad_token_id)
    logprobs, _ = policy_logprobs(model, ids, attention)
    loss = -masked_sum(logprobs, mask) / response_tokens(examples)
    # plain loop: each example alone (no padding), CE summed over its response tokens only
    total, count = 0.0, 0
    for e in examples:
        seq = torch.tensor([e.prompt_ids + e.response_ids])
        logits = model(input_ids=seq).logits[0]
        p = len(e.prompt_ids)
        for t in range(p, seq.shape[1]):
            total += float(F.cross_entropy(logits[t - 1 : t], seq[0, t : t + 1]))
            count += 1
    assert count == response_tokens(examples)
    assert abs(float(loss) - total / count) < 1e-5
