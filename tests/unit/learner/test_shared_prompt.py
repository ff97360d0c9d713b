"""Segment attention and shared-prompt packing (learner.share_prompt) on tiny random models of every
built architecture: a group's prompt computed once, its completions attending to it, gives the
logprobs, entropies, critic values and parameter gradients of the plain padded path; the setup
check refuses a model whose attention ignores the segment layout; a shared PPO update moves the
weights as the padded one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rl_service.algo import segments
from rl_service.algo.segments import PromptGroups, prompt_groups, row_layout
from rl_service.config import LearnerConfig
from rl_service.learner.attention import use_segment_attention
from rl_service.learner.batching import rank_token_micro_batches, share_units
from rl_service.learner.critic import ValueModel
from rl_service.learner.forward import Models, check_packed_attention, critic_values, policy_logprobs
from rl_service.learner.prepare import RolloutTensors
from rl_service.learner.update import ppo_update
from tests.unit.learner.test_packed_forward import ARCHITECTURES, tok
from tests.unit.learner.test_packed_forward import _model as _plain_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
__all__ = ["tok"]  # the tokenizer fixture

# (prompt length, completion lengths) per group: prompts of different lengths, completions of
# different lengths (one empty), a group of one, and a group whose prompts differ (not shared)
GROUPS = [(4, [3, 7, 1]), (9, [5, 2]), (2, [6]), (6, [4, 0, 8])]
DIFFERING = (5, [3, 4])


def _model(arch: str, tok) -> nn.Module:
    model = _plain_model(arch, tok)
    use_segment_attention(model)
    return model


def _grouped_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, PromptGroups, int]:
    """Right-padded rows of GROUPS (+ DIFFERING), their PromptGroups and the refused-group count."""
    gen = torch.Generator().manual_seed(3)
    prompts, seqs, runs = [], [], []
    for P, comps in [*GROUPS, DIFFERING]:
        prompt = torch.randint(3, vocab, (P,), generator=gen).tolist()
        run = []
        for k, n in enumerate(comps):
            p = list(prompt)
            if (P, comps) == DIFFERING and k == 1:
                p[-1] = 3 + (p[-1] - 2) % (vocab - 3)  # one token differs
            run.append(len(seqs))
            prompts.append(p)
            seqs.append(p + torch.randint(3, vocab, (n,), generator=gen).tolist())
        runs.append(run)
    T = max(len(s) for s in seqs) + 2
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        am[i, : len(s)] = 1
    groups, refused = prompt_groups(prompts, runs)
    return ids, am, groups, refused


def test_prompt_groups_share_equal_prompts_only():
    groups, refused = prompt_groups([[1, 2], [1, 2], [3], [4], [5, 6], [5, 7]], [[0, 1], [2], [3], [4, 5]])
    assert groups.group.tolist() == [0, 0, -1, -1, -1, -1] and refused == 1
    assert groups.prompt_len.tolist() == [2, 2, 1, 1, 2, 2]


def test_row_layout_holds_each_prompt_once():
    lengths, T = [6, 9, 4, 4], 10
    groups = PromptGroups(torch.tensor([4, 4, 2, 4]), torch.tensor([0, 0, -1, 0]))
    lay = row_layout(lengths, T, groups)
    assert lay.shared_tokens == 8 and lay.token_index.numel() == sum(lengths) - 8
    # prompt 0..3, then each completion continues at position 4; the plain row restarts at 0
    assert lay.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 0, 1, 2, 3]
    assert lay.src[0, :5].tolist() == [0, 1, 2, 3, 4] and lay.src[1, :8].tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    assert lay.src[3, :3].tolist() == [0, 1, 2]  # row 3's completion is empty: its prompt's predictions
    covered = torch.cat([b.q_index.flatten()[b.q_kept] for b in lay.blocks]).sort().values
    assert torch.equal(covered, torch.arange(lay.token_index.numel()))  # every position a query once


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_logprobs_entropy_and_gradients_equal_the_padded_path(arch, tok):
    model = _model(arch, tok)
    ids, am, groups, refused = _grouped_batch(len(tok))
    assert refused == 1 and int((groups.group >= 0).sum()) == 8
    mask = am[:, 1:].float()
    out, grads = {}, {}
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        g = groups if shared else None
        lp, ent = policy_logprobs(model, ids, am, with_entropy=True, entropy_grad=True, packed=shared, groups=g)
        ((lp * mask * torch.linspace(0.5, 2, lp.shape[1])).sum() + (ent * mask).sum()).backward()
        out[shared] = (lp.detach() * mask, ent.detach() * mask)
        grads[shared] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for a, b in zip(out[False], out[True]):
        assert float((a - b).abs().max()) < 1e-5
    assert grads[False].keys() == grads[True].keys()
    worst = max(float((grads[False][n] - grads[True][n]).abs().max()) for n in grads[False])
    assert worst < 1e-5, worst


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_critic_values_equal_the_padded_path(arch, tok):
    model = _model(arch, tok)
    critic = ValueModel(model.base_model, model.base_model_prefix)
    with torch.no_grad():
        critic.score.weight.normal_()
    ids, am, groups, _ = _grouped_batch(len(tok))
    mask = am[:, 1:].float()
    with torch.no_grad():
        padded = critic_values(critic, ids, am) * mask
        shared = critic_values(critic, ids, am, packed=True, groups=groups)
    assert float(padded.abs().max()) > 1e-3
    assert float((padded - shared).abs().max()) < 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_segment_attention_equals_the_padded_path(arch, tok):
    model = _model(arch, tok)
    ids, am, _, _ = _grouped_batch(len(tok))
    mask = am[:, 1:].float()
    with torch.no_grad():
        padded = policy_logprobs(model, ids, am)[0] * mask
        packed = policy_logprobs(model, ids, am, packed=True)[0]
    assert float((padded - packed).abs().max()) < 1e-5


def test_a_completion_that_cannot_see_its_prompt_is_caught(tok, monkeypatch):
    """The equivalence above fails when the mask is wrong: hide the context from completions."""
    model = _model("llama", tok)
    ids, am, groups, _ = _grouped_batch(len(tok))
    real = segments._blocks

    def blind(segs):
        return real([(s[2], 0, s[2], s[3]) for s in segs])  # every segment plain: no prompt visible

    with torch.no_grad():
        padded = policy_logprobs(model, ids, am)[0] * am[:, 1:]
        monkeypatch.setattr(segments, "_blocks", blind)
        wrong = policy_logprobs(model, ids, am, packed=True, groups=groups)[0]
    assert float((padded - wrong).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="share_prompt: false"):
        check_packed_attention(model, torch.device("cpu"), shared=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_setup_check_accepts_shared_prompts_with_segment_attention(arch, tok):
    check_packed_attention(_model(arch, tok), torch.device("cpu"), shared=True)


def test_setup_check_refuses_shared_prompts_without_segment_attention(tok):
    """transformers' own sdpa reads the completions' position ids as new samples: they would not see the prompt."""
    plain = _plain_model("llama", tok)  # transformers' sdpa
    check_packed_attention(plain, torch.device("cpu"))  # plain packing is fine there
    with pytest.raises(ValueError, match="share_prompt: false"):
        check_packed_attention(plain, torch.device("cpu"), shared=True)


def test_share_units_keep_a_group_in_one_micro_batch():
    share = [0, 0, -1, 0, 1, 1]
    assert share_units([3, 2, 0, 4, 1, 5], share) == [[3, 0, 1], [2], [4, 5]]
    lengths, plens = [10, 10, 10, 10, 10, 10], [8] * 6
    bins = rank_token_micro_batches(range(6), 0, 1, lengths, 16, share, plens)
    # group 0 costs 8 + 3 * 2 = 14 tokens, group 1 costs 12, the plain row 10
    assert sorted(map(sorted, bins)) == [[0, 1, 3], [2], [4, 5]]


def _rollout(policy: nn.Module) -> RolloutTensors:
    gen = torch.Generator().manual_seed(5)
    ids, am, groups, _ = _grouped_batch(int(policy.config.vocab_size))
    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i in range(ids.shape[0]):
        n, P = int(am[i].sum()), int(groups.prompt_len[i])
        mask[i, P - 1 : n - 1] = 1.0
    with torch.no_grad():
        old, _ = policy_logprobs(policy, ids, am)
    adv = torch.randn(ids.shape[0], 1, generator=gen).expand_as(mask) * mask
    old = old + 0.05 * torch.randn(old.shape, generator=gen)
    return RolloutTensors(ids, am, mask, old, None, adv, None, None, groups)


def test_a_shared_prompt_update_moves_the_weights_as_the_padded_one(tok):
    weights, metrics = {}, {}
    for shared in (False, True):
        policy = _model("qwen2", tok)
        data = _rollout(policy)
        cfg = LearnerConfig(
            advantage="grpo",
            max_tokens_per_microbatch=24 if shared else None,
            share_prompt=shared,
            micro_batch_size=3,
            num_minibatches=2,
            ppo_epochs=2,
            entropy_coef=0.01,
        )
        if not shared:
            data.groups = None
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        models = Models(policy, None, None, torch.device("cpu"), 0, 1, packed=shared)
        metrics[shared] = ppo_update(models, opt, None, data, cfg, kl_coef=0.0, seed=0)
        weights[shared] = {k: v.clone() for k, v in policy.state_dict().items()}
    diff = max(float((weights[False][k] - weights[True][k]).abs().max()) for k in weights[False])
    assert diff < 1e-5, diff
    assert "train/prompt_tokens_shared" not in metrics[False]
    assert metrics[True]["train/prompt_tokens_shared"] > 0
