"""Tiny Llama construction, greedy eval and a short SFT."""

import pytest
import torch

from rl_service.config import AdditionConfig, SFTConfig, TinyModelConfig
from rl_service.models.evaluate import greedy_accuracy_hf, greedy_generate
from rl_service.models.sft import make_sft_batch, sft_loss, sft_warm_start
from rl_service.models.tiny import build_tiny_model, num_params
from rl_service.models.tokenizer import build_tokenizer
from rl_service.tasks.addition import AdditionTask, Problem

CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64, max_position_embeddings=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task():
    return AdditionTask(AdditionConfig(digits=1, num_eval=20, seed=0))


@pytest.fixture(scope="module")
def tok(task):
    return build_tokenizer(task.corpus(), vocab_size=320)


def test_shapes_and_param_count(tok):
    torch.manual_seed(0)
    model = build_tiny_model(CFG, tok)
    c = model.config
    assert c.vocab_size % 8 == 0 and len(tok) <= c.vocab_size < len(tok) + 8
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert c.num_key_value_heads == c.num_attention_heads == 1 and not c.tie_word_embeddings
    assert c.max_position_embeddings == 32
    H, F, V, L = 32, 64, c.vocab_size, 2
    per_layer = 4 * H * H + 3 * H * F + 2 * H  # q,k,v,o + gate,up,down + two RMSNorms
    assert num_params(model) == 2 * V * H + L * per_layer + H
    assert all(p.dtype == torch.float32 for p in model.parameters())
    logits = model(torch.tensor([tok("3+4=").input_ids])).logits
    assert logits.shape == (1, 5, V)


def test_greedy_loop_matches_hf_generate(tok, task):
    torch.manual_seed(1)
    model = build_tiny_model(CFG, tok).eval()
    prompts = [p.prompt for p in task.eval_problems[:6]]  # mixed lengths -> left padding
    mine = greedy_generate(model, tok, prompts, max_new_tokens=5)
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=5, do_sample=False)[:, enc.input_ids.shape[1] :].tolist()
    for m, r in zip(mine, ref):
        assert m == r[: len(m)]


def test_greedy_accuracy_counts_exact_matches(tok):
    """An untrained model that always says EOS first gets 0; the verifier gives 1 for '5' vs '5'."""
    torch.manual_seed(0)
    model = build_tiny_model(CFG, tok)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0  # EOS always wins
    problems = [Problem("2+3=", "5"), Problem("0+0=", "0")]
    assert greedy_accuracy_hf(model, tok, problems) == 0.0
    assert greedy_accuracy_hf(model, tok, [Problem("2+3=", "")]) == 1.0  # empty completion == empty answer


def test_sft_batch_masks_everything_but_answer_and_eos(tok):
    ids, mask, labels = make_sft_batch(tok, [(3, 4), (12, 9)])
    assert tok.decode(ids[1][mask[1].bool()]) == "<s>12+9=21</s>"
    assert tok.decode(labels[1][labels[1] != -100]) == "21</s>"
    assert tok.decode(labels[0][labels[0] != -100]) == "7</s>"
    assert (labels[mask == 0] == -100).all()


def test_short_sft_lowers_the_loss(tok, task):
    torch.manual_seed(0)
    model = build_tiny_model(CFG, tok)
    ids, mask, labels = make_sft_batch(tok, [task.sample_train(__import__("random").Random(9)) for _ in range(64)])
    before, _ = sft_loss(model, ids, mask, labels)
    out = sft_warm_start(
        model,
        tok,
        task,
        SFTConfig(max_steps=40, batch_size=32, lr=3e-3, target_accuracy=1.0, eval_every=20),
        seed=0,
        progress=False,
    )
    after, _ = sft_loss(model, ids, mask, labels)
    assert out["steps"] == 40 and 0.0 <= out["accuracy"] <= 1.0
    assert after.item() < before.item() - 1.0


def test_sft_with_zero_steps_returns_the_random_accuracy(tok, task):
    torch.manual_seed(0)
    model = build_tiny_model(CFG, tok)
    w = model.lm_head.weight.clone()
    out = sft_warm_start(model, tok, task, SFTConfig(max_steps=0), seed=0, progress=False)
    assert out["steps"] == 0 and out["accuracy"] == greedy_accuracy_hf(model, tok, task.eval_problems)
    assert torch.equal(w, model.lm_head.weight)


def test_thread_probe_keeps_the_faster_count():
    from rl_service.models.sft import PROBE_STEPS, _pick_threads

    before = torch.get_num_threads()
    try:
        assert [_pick_threads(s, 2, {}) for s in (1, PROBE_STEPS)] == [1, 1]
        assert _pick_threads(PROBE_STEPS + 1, 2, {}) == 2
        slow_two = {1: [9.0] + [0.1] * (PROBE_STEPS - 1), 2: [0.5] * PROBE_STEPS}
        fast_two = {1: [0.1] * PROBE_STEPS, 2: [9.0] + [0.05] * (PROBE_STEPS - 1)}
        assert _pick_threads(2 * PROBE_STEPS + 1, 2, slow_two) == 1 and torch.get_num_threads() == 1
        assert _pick_threads(2 * PROBE_STEPS + 1, 2, fast_two) == 2 and torch.get_num_threads() == 2
        assert _pick_threads(3, 1, {}) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "arch, cls, tied",
    [
        ("llama", "LlamaForCausalLM", False),
        ("qwen2", "Qwen2ForCausalLM", False),
        ("gpt2", "GPT2LMHeadModel", True),
        ("mistral", "MistralForCausalLM", False),
    ],
)
def test_builds_every_architecture_with_the_same_shape_fields(arch, cls, tied, tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.models.tiny import save_random_model

    cfg = CFG.model_copy(update={"architecture": arch})
    torch.manual_seed(0)
    model = build_tiny_model(cfg, tok)
    c = model.config
    assert type(model).__name__ == cls and c.model_type == arch
    # The HF attribute map reads GPT-2's n_embd / n_layer / n_head / n_positions under these names.
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.max_position_embeddings) == (32, 2, 1, 32)
    assert c.tie_word_embeddings == tied and (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model(torch.tensor([tok("3+4=").input_ids])).logits.shape == (1, 5, c.vocab_size)
    out = save_random_model(tmp_path / arch, cfg, ["3+4=7"], seed=0)
    again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(again).__name__ == cls and AutoTokenizer.from_pretrained(out).chat_template


def test_llama_build_is_the_model_built_before_architectures(tok):
    """The default architecture builds exactly the Llama it always did (cached builds stay valid)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlamaConfig(
        vocab_size=(len(tok) + 7) // 8 * 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, head_dim=32, max_position_embeddings=32,
        tie_word_embeddings=False, rms_norm_eps=1e-5, dtype="float32", **ids,
    )  # fmt: skip
    torch.manual_seed(0)
    before = LlamaForCausalLM(config).to(torch.float32)
    before.generation_config = GenerationConfig(**ids)
    torch.manual_seed(0)
    now = build_tiny_model(CFG, tok)
    assert now.config.to_dict() == before.config.to_dict()
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in now.state_dict().items())
