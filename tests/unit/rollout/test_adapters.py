"""model.lora.sync resolved per run (rollout/adapters.py): adapters where vLLM serves them, merged
weights otherwise, an explicit `adapters` that cannot be served refused in one line; the adapter
files an engine writes are what peft reads."""

import json

import pytest
import torch

from rl_service.config import Config
from rl_service.rollout import adapters


def model_dir(tmp_path, arch: str):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    return tmp_path


def config(**lora) -> Config:
    return Config.model_validate({"model": {"lora": {"r": 8, **lora}}})


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"])
def test_auto_sends_adapters_where_vllm_has_lora_layers(tmp_path, arch):
    cfg = adapters.resolve(config(), model_dir(tmp_path, arch))
    assert cfg.model.lora.sync == "adapters"
    assert cfg.rollout.engine.lora_rank == 8 and cfg.serve.engine.lora_rank == 8


def test_auto_falls_back_to_merged_weights_for_gpt2_and_the_hf_engine(tmp_path):
    gpt2 = adapters.resolve(config(), model_dir(tmp_path, "GPT2LMHeadModel"))
    assert gpt2.model.lora.sync == "merged" and gpt2.rollout.engine.lora_rank == 0
    hf = Config.model_validate({"model": {"lora": {"r": 8}}, "rollout": {"engine": {"name": "hf"}}})
    assert adapters.resolve(hf, model_dir(tmp_path, "LlamaForCausalLM")).model.lora.sync == "merged"
    # a Serve replica on the HF engine cannot serve adapters either
    served = Config.model_validate({"model": {"lora": {"r": 8}}, "serve": {"enabled": True, "engine": {"name": "hf"}}})
    assert adapters.resolve(served, model_dir(tmp_path, "LlamaForCausalLM")).model.lora.sync == "merged"


def test_explicit_adapters_that_cannot_be_served_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers for GPT2LMHeadModel"):
        adapters.resolve(config(sync="adapters"), model_dir(tmp_path, "GPT2LMHeadModel"))
    hf = Config.model_validate({"model": {"lora": {"r": 8, "sync": "adapters"}}, "rollout": {"engine": {"name": "hf"}}})
    with pytest.raises(ValueError, match="rollout.engine=hf cannot serve LoRA adapters"):
        adapters.resolve(hf, model_dir(tmp_path, "LlamaForCausalLM"))
    with pytest.raises(ValueError, match=r"not \['lm_head'\]"):
        adapters.resolve(
            config(sync="adapters", target_modules=["q_proj", "lm_head"]), model_dir(tmp_path, "LlamaForCausalLM")
        )
    assert (
        adapters.resolve(config(target_modules=["lm_head"]), model_dir(tmp_path, "LlamaForCausalLM")).model.lora.sync
        == "merged"
    )


def test_merged_and_no_lora_are_left_as_they_are(tmp_path):
    d = model_dir(tmp_path, "LlamaForCausalLM")
    merged = adapters.resolve(config(sync="merged"), d)
    assert merged.model.lora.sync == "merged" and merged.rollout.engine.lora_rank == 0
    plain = Config()
    assert adapters.resolve(plain, d) is plain


def test_max_lora_rank_is_the_smallest_value_vllm_accepts():
    assert [adapters.max_lora_rank(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        adapters.max_lora_rank(513)


def test_adapter_files_are_what_peft_reads(tmp_path):
    from peft import LoraConfig as PeftLora
    from safetensors.torch import load_file

    cfg = PeftLora(r=2, lora_alpha=4, target_modules=["q_proj"]).to_dict()
    text = json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()})
    name, a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", torch.randn(2, 6)
    out = adapters.write_adapter_files({name: a}, text, tmp_path / "a")
    assert torch.equal(load_file(str(out / "adapter_model.safetensors"))[name], a)
    assert PeftLora.from_pretrained(str(out)).r == 2
    with pytest.raises(json.JSONDecodeError):
        adapters.write_adapter_files({name: a}, "{not json", tmp_path / "b")
