"""learner/lora.py on tiny models of four architectures built here: the merged weights equal
peft's own merge_and_unload, adapters off is the base model, only adapters train."""

import copy

import pytest
import torch

from rl_service.config import LoraConfig
from rl_service.learner import lora

ARCHS = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=32),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=32),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, max_position_embeddings=32),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0),
}  # fmt: skip
TARGETS = {"gpt2": ["c_attn", "c_fc", "c_proj"]}
LLAMA_LIKE = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def _model(arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, vocab_size=64, **ARCHS[arch])).eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_merged_weights_are_pefts_merge_and_adapters_off_is_the_base(arch, one_torch_thread):
    from peft import get_peft_model

    cfg = LoraConfig(r=4, alpha=8.0)
    base = _model(arch)
    adapted = copy.deepcopy(base)
    assert lora.default_targets(base) == TARGETS.get(arch, LLAMA_LIKE)
    peft_cfg = lora.peft_config(cfg, base)
    layers = lora.add_adapters(adapted, peft_cfg)
    assert len(layers) == 2 * (4 if arch == "gpt2" else 7)  # GPT-2: attn.c_proj and mlp.c_proj
    assert all(fan == (arch == "gpt2") for fan in layers.values())  # GPT-2's Conv1D: [in, out]
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for n, p in adapted.named_parameters():
        if ".lora_B." in n:  # B starts at 0 (the adapters are the identity): give them a value
            torch.nn.init.normal_(p, std=0.2)

    ids = torch.randint(0, 64, (2, 9))
    merged = lora.merged_state_dict(adapted.state_dict(), layers, lora.scaling(cfg))
    assert set(merged) == set(base.state_dict())
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        assert (plain(ids).logits - adapted(ids).logits).abs().max() < 1e-5
        assert (adapted(ids).logits - base(ids).logits).abs().max() > 1e-2  # the adapters do something
        with lora.adapters_disabled(adapted):
            assert torch.equal(adapted(ids).logits, base(ids).logits)
        assert torch.equal(lora.AdaptersOff(adapted)(ids).logits, base(ids).logits)

    # peft's own merge of the same adapters, loaded through its file format
    reference = get_peft_model(copy.deepcopy(base), peft_cfg)
    from peft import set_peft_model_state_dict

    adapters = {k.replace(".default.", "."): v for k, v in lora.adapter_tensors(adapted.state_dict()).items()}
    result = set_peft_model_state_dict(reference, {"base_model.model." + k: v for k, v in adapters.items()})
    assert not result.unexpected_keys
    by_peft = reference.merge_and_unload().state_dict()
    assert max(float((by_peft[k] - merged[k]).abs().max()) for k in merged) < 1e-6


def test_adapter_dropout_is_on_only_inside_its_context(one_torch_thread):
    model = _model("llama")
    lora.add_adapters(model, lora.peft_config(LoraConfig(r=2, dropout=0.5), model))
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and not any(m.training for m in drops)
    with lora.adapter_dropout(model):
        assert all(m.training for m in drops)
        assert not model.model.layers[0].self_attn.q_proj.base_layer.training  # the rest stays in eval
    assert not any(m.training for m in drops)


def test_an_unknown_target_is_named():
    with pytest.raises(ValueError, match=r"model.lora.target_modules: no module named \['qkv'\] in LlamaForCausalLM"):
        lora.peft_config(LoraConfig(r=2, target_modules=["q_proj", "qkv"]), _model("llama"))
