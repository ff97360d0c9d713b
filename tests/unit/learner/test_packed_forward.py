"""Sequence packing in the learner's forwards, on tiny random models of every built architecture:
packed logprobs, entropies, critic values and their gradients equal the padded path's, the setup
check refuses a model that lets packed samples attend to each other, and a packed PPO update
moves the weights as the padded one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rl_service.config import LearnerConfig, TinyModelConfig
from rl_service.learner.critic import ValueModel
from rl_service.learner.forward import Models, check_packed_attention, critic_values, policy_logprobs
from rl_service.learner.prepare import RolloutTensors
from rl_service.learner.update import ppo_update
from rl_service.models.tiny import build_tiny_model
from rl_service.models.tokenizer import build_tokenizer
from tests.unit.conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHITECTURES = ["llama", "qwen2", "gpt2", "mistral"]
CORPUS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS, vocab_size=300)


def _model(arch: str, tok) -> nn.Module:
    torch.manual_seed(0)
    shape = TinyModelConfig(architecture=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return build_tiny_model(shape, tok).eval()


def _batch(vocab: int, lengths: list[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-padded rows: input_ids, attention_mask [b, T] with T = longest + 2 (extra padding)."""
    gen = torch.Generator().manual_seed(len(lengths))
    T = max(lengths) + 2
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    am = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
        am[i, :n] = 1
    return ids, am


LENGTHS = [5, 12, 2, 9, 7, 12]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_logprobs_entropy_and_gradients_equal_the_padded_path(arch, tok):
    model = _model(arch, tok)
    ids, am = _batch(len(tok), LENGTHS)
    mask = am[:, 1:].float()
    grads = {}
    out = {}
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent = policy_logprobs(model, ids, am, with_entropy=True, entropy_grad=True, packed=packed)
        ((lp * mask).sum() + (ent * mask).sum()).backward()
        out[packed] = (lp.detach(), ent.detach())
        grads[packed] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for a, b in zip(out[False], out[True]):  # (the padded path leaves garbage past shorter rows)
        assert a.shape == b.shape == (len(LENGTHS), ids.shape[1] - 1)
        assert float((a * mask - b).abs().max()) < 1e-5
        assert torch.equal(b * (1 - mask), torch.zeros_like(b))  # 0 past each sample
    assert grads[False].keys() == grads[True].keys()
    worst = max(float((grads[False][n] - grads[True][n]).abs().max()) for n in grads[False])
    assert worst < 1e-5, worst
    # proof that the samples would interact: the same row without position resets differs
    row = ids[am.bool()][None]
    with torch.no_grad():
        crossed = model(input_ids=row, use_cache=False).logits[0, LENGTHS[0] : LENGTHS[0] + LENGTHS[1] - 1]
        alone = model(input_ids=ids[1:2, : LENGTHS[1]], use_cache=False).logits[0, :-1]
    assert float((crossed - alone).abs().max()) > 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_critic_values_equal_the_padded_path(arch, tok):
    model = _model(arch, tok)
    critic = ValueModel(model.base_model, model.base_model_prefix)
    with torch.no_grad():
        critic.score.weight.normal_()  # the zero init would make every value 0
    ids, am = _batch(len(tok), LENGTHS)
    mask = am[:, 1:].float()
    with torch.no_grad():
        padded = critic_values(critic, ids, am) * mask
        packed = critic_values(critic, ids, am, packed=True)
    assert padded.shape == packed.shape
    assert float(padded.abs().max()) > 1e-3
    assert float((padded - packed).abs().max()) < 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_setup_check_accepts_every_architecture(arch, tok):
    check_packed_attention(_model(arch, tok), torch.device("cpu"))


class _IgnoresPositions(nn.Module):
    """A causal LM that drops position_ids: packed samples would attend across boundaries."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **attention_kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_setup_check_refuses_a_model_that_mixes_packed_samples(tok):
    with pytest.raises(ValueError, match="max_tokens_per_microbatch: null"):
        check_packed_attention(_IgnoresPositions(_model("llama", tok)), torch.device("cpu"))


def _rollout(policy: nn.Module) -> RolloutTensors:
    gen = torch.Generator().manual_seed(5)
    lengths = [4, 11, 6, 3, 10, 8, 9, 5]
    ids, am = _batch(32, lengths)
    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, n in enumerate(lengths):
        mask[i, 2 : n - 1] = 1.0
    with torch.no_grad():
        old, _ = policy_logprobs(policy, ids, am)
    adv = torch.randn(len(lengths), 1, generator=gen).expand_as(mask) * mask
    return RolloutTensors(ids, am, mask, old + 0.05 * torch.randn(old.shape, generator=gen), None, adv, None, None)


def test_a_packed_update_moves_the_weights_as_the_padded_one():
    weights, metrics = {}, {}
    for budget in (None, 16):
        torch.manual_seed(0)
        policy = tiny_llama()
        data = _rollout(policy)
        cfg = LearnerConfig(
            advantage="grpo", max_tokens_per_microbatch=budget, micro_batch_size=3, num_minibatches=2, ppo_epochs=2
        )
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        models = Models(policy, None, None, torch.device("cpu"), 0, 1, packed=budget is not None)
        metrics[budget] = ppo_update(models, opt, None, data, cfg, kl_coef=0.0, seed=0)
        weights[budget] = {k: v.clone() for k, v in policy.state_dict().items()}
    diff = max(float((weights[None][k] - weights[16][k]).abs().max()) for k in weights[None])
    assert diff < 1e-6, diff
    assert metrics[None]["train/pad_frac"] > 0.1 and metrics[None]["train/pad_frac_saved"] == 0.0
    assert metrics[16]["train/pad_frac"] == 0.0 and metrics[16]["train/pad_frac_saved"] > 0.1
