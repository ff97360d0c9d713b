"""ensure_model: build once into the cache, reuse, reproducible, pass model.path through."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_service.config import AdditionConfig, ModelConfig, SFTConfig, TinyModelConfig
from rl_service.models.build import cache_key, ensure_model, load_build_info
from rl_service.models.evaluate import greedy_accuracy_hf
from rl_service.tasks.addition import AdditionTask

TASK = AdditionConfig(digits=1, num_eval=20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(cache_dir, **sft) -> ModelConfig:
    return ModelConfig(
        cache_dir=str(cache_dir),
        build=TinyModelConfig(
            hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_position_embeddings=32
        ),
        sft=SFTConfig(max_steps=20, batch_size=32, eval_every=10, target_accuracy=1.0, **sft),
    )


def test_builds_once_then_reuses(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    path = ensure_model(cfg, TASK, seed=0, progress=False)
    assert path.parent == tmp_path and path.name.startswith("tiny-")
    info = load_build_info(path)
    assert info["sft_steps"] == 20 and info["num_params"] > 0 and info["vocab_size"] > 0
    stamp = (path / "build_info.json").stat().st_mtime_ns, (path / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    assert ensure_model(cfg, TASK, seed=0, progress=False) == path
    assert "reusing" in capsys.readouterr().out
    assert ((path / "build_info.json").stat().st_mtime_ns, (path / "model.safetensors").stat().st_mtime_ns) == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp dirs left behind

    # The saved dir is a complete HF model: loads with Auto*, and its accuracy is the recorded one.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("3+4=").input_ids[0] == tok.bos_token_id == model.generation_config.bos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    acc = greedy_accuracy_hf(model, tok, AdditionTask(TASK).eval_problems)
    assert acc == info["base_accuracy"]


def test_build_is_reproducible_and_key_tracks_config(tmp_path):
    a = ensure_model(tiny_cfg(tmp_path / "a"), TASK, seed=3, progress=False)
    b = ensure_model(tiny_cfg(tmp_path / "b"), TASK, seed=3, progress=False)
    assert a.name == b.name
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    cfg = tiny_cfg(tmp_path)
    assert cache_key(cfg, TASK, 0) != cache_key(cfg, TASK, 1)
    assert cache_key(cfg, TASK, 0) != cache_key(tiny_cfg(tmp_path, lr=5e-3), TASK, 0)
    assert cache_key(cfg, TASK, 0) != cache_key(cfg, AdditionConfig(digits=1, num_eval=21), 0)


def test_losing_a_build_race_keeps_the_existing_model(tmp_path, capsys, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    target = tmp_path / f"tiny-{cache_key(cfg, TASK, 0)}"
    # Another process "wins" while we build: its dir appears before our rename.
    import rl_service.models.build as build

    real = build._build_into

    def build_and_lose(out, *args):
        info = real(out, *args)
        target.mkdir()
        (target / "build_info.json").write_text(json.dumps({"winner": True}))
        return info

    monkeypatch.setattr(build, "_build_into", build_and_lose)
    assert ensure_model(cfg, TASK, seed=0, progress=False) == target
    assert load_build_info(target) == {"winner": True}
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert "another process" in capsys.readouterr().out


def test_model_path_is_passed_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = ModelConfig(path=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert ensure_model(cfg, TASK, seed=0) == tmp_path
    assert not (tmp_path / "cache").exists()
    assert load_build_info(tmp_path) is None


def test_architecture_is_in_the_key_except_the_default_llama(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    llama = cfg.model_copy(update={"build": cfg.build.model_copy(update={"architecture": "llama"})})
    assert cache_key(llama, TASK, 0) == cache_key(cfg, TASK, 0)  # keys of pre-architecture builds kept
    keys = {cache_key(cfg.model_copy(update={"build": cfg.build.model_copy(update={"architecture": a})}), TASK, 0)
            for a in ("llama", "qwen2", "gpt2", "mistral")}  # fmt: skip
    assert len(keys) == 4
    gpt2 = cfg.model_copy(update={"build": cfg.build.model_copy(update={"architecture": "gpt2"})})
    path = ensure_model(gpt2, TASK, seed=0, progress=False)
    assert "building tiny GPT-2" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert type(model).__name__ == "GPT2LMHeadModel" and load_build_info(path)["sft_steps"] == 20


def test_a_dataset_task_builds_a_random_init_of_its_architecture_with_a_chat_template(tmp_path):
    from rl_service.config import DatasetConfig
    from rl_service.tasks.dataset import DatasetTask

    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i}-1="}], "answer": str(i - 1)} for i in range(1, 30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DatasetConfig(train=str(data), num_eval=5)
    cfg = tiny_cfg(tmp_path)
    cfg.build.architecture = "qwen2"
    path = ensure_model(cfg, task, seed=0, progress=False)
    assert load_build_info(path)["sft_steps"] == 0  # the warm start is `rl-service sft`
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "qwen2"
    tok = AutoTokenizer.from_pretrained(path)
    bound = DatasetTask(task).bind(tok)  # messages need the template the build gave the tokenizer
    assert tok.decode(bound.eval_prompts[0].token_ids).endswith("assistant:\n")
    assert len(tok("assistant", add_special_tokens=False).input_ids) == 1, "role words merged into one token"
    key = cache_key(cfg, task, 0)
    data.write_text(data.read_text() + json.dumps({"prompt": "9-9=", "answer": "0"}) + "\n")
    assert cache_key(cfg, task, 0) != key, "new rows, new tokenizer: the cache key must change"
