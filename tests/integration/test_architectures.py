"""Any HF causal LM that vLLM runs: Llama, Qwen2, GPT-2 and Mistral, each a random-init tiny model
with a chat-template tokenizer (models/tiny.save_random_model), through every component.

Per architecture (module-scoped fixtures, so each engine and the learner run start once):
vLLM generates from chat-template ids and scores like transformers; the FSDP2 learner (1 gloo
rank, a spawned process) trains one GAE step with its critic and one GRPO step; the published
state dict loads into vLLM and into the HF engine with the weight-sync probe within
`rollout.verify_tolerance`; the export (Learner.save_hf) loads in transformers, and in vLLM as the
engine of a Serve replica (`rl-service serve`'s app) that answers a chat completion with the
model's own template ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import httpx
import pytest
import torch
import torch.multiprocessing as mp

from rl_service.config import LearnerConfig, LoraConfig, RolloutConfig, ServeConfig, TinyModelConfig
from rl_service.infra.env import free_port
from rl_service.models.tiny import save_random_model
from rl_service.rollout.weight_sync import WeightSyncError, load_verified, max_probe_diff
from rl_service.types import ScoredBatch
from tests.integration.conftest import tagged_sample

ARCHITECTURES = ["llama", "qwen2", "gpt2", "mistral"]
SERVED = ["llama", "gpt2"]
GROUP = 4
LORA = LoraConfig(r=4, alpha=32.0)  # scale 8: one step at lr 5e-4 moves the merged weights visibly
TOLERANCE = RolloutConfig().verify_tolerance
CHAT = [{"role": "system", "content": "add the numbers"}, {"role": "user", "content": "12+34="}]
CORPUS = [f"{a}+{b}={a + b}" for a in range(40) for b in range(40)] + ["system user assistant add the numbers"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(arch, tmp_path_factory) -> Path:
    shape = TinyModelConfig(architecture=arch, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    return save_random_model(tmp_path_factory.mktemp(arch) / "model", shape, CORPUS, seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def template_ids(tokenizer, messages=CHAT) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def probes(tokenizer) -> list[list[int]]:
    """Two probe sequences: the chat prompt with an answer, and a plain one."""
    answer = tokenizer("46", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [template_ids(tokenizer) + answer, tokenizer("7+8=15")["input_ids"]]


def _batches(tokenizer) -> list[ScoredBatch]:
    """4 chat prompts x GROUP random responses (ending in EOS), 0/1 rewards."""
    rng = random.Random(0)
    samples, rewards = [], []
    for pid in range(4):
        text = f"{rng.randrange(40)}+{rng.randrange(40)}="
        prompt_ids = tuple(template_ids(tokenizer, [{"role": "user", "content": text}]))
        for k in range(GROUP):
            resp = tuple(rng.randrange(3, len(tokenizer)) for _ in range(rng.randint(1, 5))) + (tokenizer.eos_token_id,)
            samples.append(tagged_sample(pid, k, text, prompt_ids, resp))
            rewards.append(float(rng.random() < 0.5))
    return [
        ScoredBatch(
            batch_id=0,
            samples=tuple(samples),
            rewards=tuple(rewards),
            dropped=(),
            policy_version=0,
            generate_s=0.0,
            reward_s=0.0,
        )
    ]


def _learner_config(advantage: str) -> LearnerConfig:
    kind = {"type": "gae", "critic_lr": 5e-4} if advantage == "gae" else {"type": "grpo"}
    return LearnerConfig(
        num_workers=1,
        backend="gloo",
        advantage=kind,
        lr=5e-4,
        ppo_epochs=1,
        num_minibatches=1,
        micro_batch_size=16,
        kl={"estimator": "k3", "placement": "loss", "coef": 0.05},
        behavior_logprobs="learner",
    )


def _learn(rank: int, model_dir: str, out: str) -> None:
    """Spawned: one GAE learner (train step, publish, export) then one GRPO learner (train step,
    publish), each on its own 1-rank gloo group."""
    from transformers import AutoTokenizer

    from rl_service.learner.learner import Learner

    tok = AutoTokenizer.from_pretrained(model_dir)
    batches, result = _batches(tok), {}
    for advantage in ("gae", "grpo"):
        learner = Learner(_learner_config(advantage), model_dir, 0, 1, "127.0.0.1", free_port(), seed=0)
        try:
            info = learner.setup()
            metrics = learner.train_step(batches, GROUP)
            version, state_dict = learner.publish(1, probes(tok))
            if advantage == "gae":
                learner.save_hf(str(Path(out) / "export"))
            result[advantage] = {"info": info, "metrics": metrics, "version": version, "state_dict": state_dict}
        finally:
            learner.shutdown()
    # LoRA (model.lora): GAE with adapters on policy and critic, the reference = adapters off
    learner = Learner(_learner_config("gae"), model_dir, 0, 1, "127.0.0.1", free_port(), seed=0, lora=LORA)
    try:
        info = learner.setup()
        metrics = learner.train_step(batches, GROUP)
        version, state_dict = learner.publish(1, probes(tok))
        learner.save_hf(str(Path(out) / "lora-export"))
        result["lora"] = {"info": info, "metrics": metrics, "version": version, "state_dict": state_dict}
        # the same weights published as adapters only (model.lora.sync=adapters, as resolved for vLLM)
        learner.lora = learner.lora.model_copy(update={"sync": "adapters"})
        version, state_dict = learner.publish(2, probes(tok))
        result["lora-adapters"] = {"version": version, "state_dict": state_dict}
    finally:
        learner.shutdown()
    torch.save(result, Path(out) / "learned.pt")


@pytest.fixture(scope="module")
def learned(arch, model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp(f"{arch}-learner")
    ctx = mp.spawn(_learn, nprocs=1, join=False, args=(str(model_dir), str(out)))
    while not ctx.join():  # raises with the child's traceback if it failed
        pass
    result = torch.load(out / "learned.pt", weights_only=False)
    result["export"] = out / "export"
    result["lora-export"] = out / "lora-export"
    return result


@pytest.fixture(scope="module")
def vllm(arch, model_dir):
    from rl_service.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(model_dir), kv_cache_gib=0.0625, seed=0, cpu_threads=1, block_size=32)
    yield engine
    del engine


@pytest.fixture(scope="module")
def serve_url(serve_port):
    """The session's Serve (tests/conftest.py); one app per architecture is deployed on it."""
    return f"http://127.0.0.1:{serve_port}"


def test_learner_trains_gae_with_critic_and_grpo(arch, learned, model_dir):
    from safetensors.torch import load_file

    initial = load_file(str(model_dir / "model.safetensors"))
    for advantage in ("gae", "grpo"):
        res = learned[advantage]
        m, sd = res["metrics"], res["state_dict"]
        assert res["info"]["critic"] == (advantage == "gae")
        assert m["train/optimizer_steps"] == 1 and m["train/skipped_steps"] == 0, (advantage, m)
        assert ("loss/value" in m) == (advantage == "gae")
        assert all(math.isfinite(v) for v in m.values()), m
        moved = max(float((sd[k] - initial[k]).abs().max()) for k in initial)
        assert moved > 1e-4, (advantage, moved)  # one AdamW step at lr 5e-4 moves every weight ~lr
        assert set(initial) <= set(sd)


def test_vllm_generates_and_scores_like_transformers(arch, vllm, tokenizer, model_dir):
    from transformers import AutoModelForCausalLM

    prompt = template_ids(tokenizer)
    (group,) = vllm.generate_ids([prompt], n=2, max_new_tokens=8, seed=3)
    assert [c.prompt_ids for c in group] == [tuple(prompt)] * 2
    assert all(1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids) for c in group)
    # The engine's logprobs of what it generated are the model's (transformers on the same weights).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seq = prompt + list(group[0].token_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, :-1], -1)
    ref = logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0][len(prompt) - 1 :]
    assert max(abs(a - b) for a, b in zip(group[0].logprobs, ref.tolist())) < TOLERANCE


def test_weight_sync_probe_holds_in_vllm_and_hf(arch, learned, vllm, model_dir):
    from rl_service.rollout.hf_engine import HFEngine

    hf = HFEngine(str(model_dir), device="cpu")
    for engine in (vllm, hf):
        for version, advantage in enumerate(("gae", "grpo"), start=1):
            pv, sd = learned[advantage]["version"], learned[advantage]["state_dict"]
            pv = dataclasses.replace(pv, version=version)
            stale = max_probe_diff(pv.probe_logprobs, engine.score([list(p) for p in pv.probe_ids]))
            assert stale > TOLERANCE  # the trained weights really differ from what the engine holds
            got = load_verified(engine, sd, pv, TOLERANCE, f"{arch} {type(engine).__name__}")
            assert got["probe_max_diff"] <= TOLERANCE and engine.version == version
    # The probe bites: the GAE weights (right checksum) against the GRPO learner's probe logprobs.
    wrong = dataclasses.replace(learned["gae"]["version"], version=3, probe_logprobs=pv.probe_logprobs)
    with pytest.raises(WeightSyncError, match="probe logprobs differ"):
        load_verified(hf, learned["gae"]["state_dict"], wrong, TOLERANCE, "hf")


def test_export_loads_in_transformers(arch, learned, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = learned["export"]
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    sd = learned["gae"]["state_dict"]
    assert all(torch.equal(model.state_dict()[k], sd[k]) for k in sd)
    assert model.config.tie_word_embeddings == (arch == "gpt2")
    exported_tok = AutoTokenizer.from_pretrained(export)
    assert exported_tok.chat_template == tokenizer.chat_template
    assert template_ids(exported_tok) == template_ids(tokenizer)


def test_lora_trains_adapters_and_its_merged_weights_load_in_vllm(arch, learned, vllm, model_dir):
    """model.lora on every architecture: adapters only (the base frozen), the merged weights the
    engines get pass vLLM's probe check, and the export's adapter dir, merged by peft itself,
    equals them."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    res = learned["lora"]
    assert res["info"]["lora_layers"] > 0 and res["info"]["trainable_params"] < 0.2 * res["info"]["num_params"]
    assert res["metrics"]["train/optimizer_steps"] == 1 and all(math.isfinite(v) for v in res["metrics"].values())
    initial, sd = load_file(str(model_dir / "model.safetensors")), res["state_dict"]
    assert set(initial) <= set(sd) and not any(".lora_" in k or ".base_layer." in k for k in sd)
    moved = {k for k in initial if not torch.equal(sd[k], initial[k])}
    assert moved and all(".h." in k or ".layers." in k for k in moved), sorted(moved)[:4]  # blocks only
    assert not any("norm" in k or "ln_" in k for k in moved), "a frozen norm moved"
    pv = dataclasses.replace(res["version"], version=9)
    got = load_verified(vllm, sd, pv, TOLERANCE, f"{arch} lora")
    assert got["probe_max_diff"] <= TOLERANCE and vllm.version == 9
    export = learned["lora-export"]
    merged = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).state_dict()
    assert all(torch.equal(merged[k], sd[k]) for k in sd)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    by_peft = PeftModel.from_pretrained(base, export / "adapter").merge_and_unload().state_dict()
    assert max(float((by_peft[k] - sd[k]).abs().max()) for k in sd) < 1e-6


def test_lora_adapters_alone_reach_vllm_where_it_has_lora_layers(arch, learned, model_dir):
    """model.lora.sync=auto: Llama, Qwen2, Mistral get only the adapters (peft names, the export's
    adapter file exactly), served by a vLLM engine with LoRA on its unchanged base weights within
    the probe tolerance; GPT-2 (no LoRA layers in vLLM) gets the merged weights. A corrupt adapter
    version is refused before it is loaded."""
    from safetensors.torch import load_file

    from rl_service.config import Config
    from rl_service.rollout.adapters import max_lora_rank, resolve
    from rl_service.rollout.vllm_engine import VLLMEngine

    run = resolve(Config.model_validate({"model": {"lora": LORA.model_dump()}}), model_dir)
    if arch == "gpt2":
        assert run.model.lora.sync == "merged" and run.rollout.engine.lora_rank == 0
        return
    assert run.model.lora.sync == "adapters" and run.rollout.engine.lora_rank == max_lora_rank(LORA.r)
    pv, sd = learned["lora-adapters"]["version"], learned["lora-adapters"]["state_dict"]
    exported = load_file(str(learned["lora-export"] / "adapter" / "adapter_model.safetensors"))
    assert set(sd) == set(exported) and all(torch.equal(sd[k], exported[k]) for k in sd)
    assert json.loads(pv.adapter_config)["r"] == LORA.r and not learned["lora"]["version"].adapter_config
    assert pv.num_bytes * 10 < learned["lora"]["version"].num_bytes  # r 4 of hidden 64: ~1/8 of the bytes
    engine = VLLMEngine(str(model_dir), kv_cache_gib=0.0625, seed=0, cpu_threads=1, block_size=32, lora_rank=8)
    try:
        stale = max_probe_diff(pv.probe_logprobs, engine.score([list(p) for p in pv.probe_ids]))
        assert stale > TOLERANCE  # the base alone is not the trained policy
        corrupt = {k: v + (1e-3 if i == 0 else 0) for i, (k, v) in enumerate(sorted(sd.items()))}
        with pytest.raises(WeightSyncError, match="checksum"):
            load_verified(engine, corrupt, pv, TOLERANCE, arch)
        assert engine.version == 0
        for version in (2, 3):  # the second load replaces the first adapter in place
            got = load_verified(engine, sd, dataclasses.replace(pv, version=version), TOLERANCE, f"{arch} adapters")
            assert got["probe_max_diff"] <= TOLERANCE and engine.version == version
        assert len(engine.llm.llm_engine.list_loras()) == 1
        # the adapter is in every call: streamed tokens equal the generated ones, not the base's
        ids = list(pv.probe_ids[0][:6])
        (greedy,) = engine.generate_ids([ids], n=1, max_new_tokens=6, temperature=0)[0]
        streamed = [t for d in engine.stream([ids], n=1, max_new_tokens=6, temperature=0) for t in d.token_ids]
        assert tuple(streamed) == greedy.token_ids
    finally:
        del engine


def test_the_lora_architecture_table_agrees_with_vllm():
    """rollout/adapters.py lists the architectures with vLLM LoRA layers (to keep vLLM's model
    imports out of the CLI): each listed one has them in vLLM's registry, GPT-2's has none."""
    import importlib

    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.model_executor.models.registry import _VLLM_MODELS

    from rl_service.rollout.adapters import VLLM_LORA_ARCHITECTURES

    def model_class(arch: str):
        module, name = _VLLM_MODELS[arch]
        return getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)

    assert all(supports_lora(model_class(a)) for a in VLLM_LORA_ARCHITECTURES)
    assert not supports_lora(model_class("GPT2LMHeadModel"))


@pytest.mark.parametrize("arch", SERVED, indirect=True, scope="module")
def test_serve_answers_chat_through_the_template_on_the_export(arch, learned, serve_url):
    """The export loads in vLLM (the replica's engine) and a chat completion's prompt is exactly
    the template's ids; greedy, its answer equals the HF engine's from those ids. Two
    architectures (untied and tied embeddings; Llama's export is the LoRA run's, merged): every
    one already loads in vLLM above, and a Serve deployment per architecture costs ~20-80 s on 2
    cores."""
    from ray import serve
    from transformers import AutoTokenizer

    from rl_service.infra.placement import serve_app
    from rl_service.rollout.hf_engine import HFEngine

    export = str(learned["lora-export" if arch == "llama" else "export"])  # a LoRA run's final/ too
    cfg = ServeConfig(engine={"name": "vllm", "kv_cache_gib": 0.0625}, feedback_db=str(Path(export) / "fb.sqlite"))
    serve.run(serve_app(cfg, export), name=f"arch-{arch}", route_prefix="/")
    try:
        body = {"model": "policy", "messages": CHAT, "max_tokens": 6, "temperature": 0}
        resp = httpx.post(f"{serve_url}/v1/chat/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
    finally:
        serve.delete(f"arch-{arch}")
    ids = template_ids(AutoTokenizer.from_pretrained(export))
    answer = resp.json()
    assert answer["usage"]["prompt_tokens"] == len(ids)
    (expected,) = HFEngine(export, device="cpu").generate_ids([ids], n=1, max_new_tokens=6, temperature=0)[0]
    assert answer["choices"][0]["message"]["content"] == expected.text
    assert answer["usage"]["completion_tokens"] == len(expected.token_ids)
