"""The FSDP2 learner with LoRA adapters (model.lora), under real torch.distributed (gloo).

One update with GAE (a critic with adapters of its own) and the KL to the reference in the
reward (the reference = the policy with its adapters off), in 1 and in 2 processes; then its
publish, export and checkpoint; one more update, and the same update again after a resume.
Checked: only the adapted layers move; 1 process == 2 processes; what the engines get is the
merged weights, equal to peft's own merge of the exported adapter directory, with probe
logprobs a plain transformers model of those weights reproduces; the resume is exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rl_service.config import LearnerConfig, LoraConfig
from rl_service.infra.env import free_port
from rl_service.learner.learner import Learner
from rl_service.rollout.weight_sync import state_dict_checksum
from tests.integration.test_fsdp_learner import GROUP, PROBES, _batches, _plain_probe_logprobs

LORA = LoraConfig(r=4, alpha=8.0)


def _config() -> LearnerConfig:
    return LearnerConfig(
        num_workers=1,
        backend="gloo",
        kl_hard_limit=None,
        advantage={"type": "gae", "critic_lr": 5e-3},
        lr=5e-3,  # LoRA's B starts at 0: a few steps at a LoRA-sized lr move it visibly
        ppo_epochs=2,
        num_minibatches=2,
        micro_batch_size=7,
        kl={"estimator": "k1", "placement": "reward", "coef": 0.05},
        behavior_logprobs="learner",
    )


def _worker(rank: int, world_size: int, port: int, model_dir: str, batches, out: str, resume: str | None) -> None:
    learner = Learner(_config(), model_dir, rank, world_size, "127.0.0.1", port, seed=0, lora=LORA)
    try:
        res = {"info": learner.setup()}
        if resume is None:
            res["m1"] = learner.train_step(batches, GROUP)
            res["v1"], res["sd1"] = learner.publish(1, PROBES)
            learner.save_hf(os.path.join(out, "hf"))
            learner.save_checkpoint(os.path.join(out, "ckpt"))
            os.makedirs(os.path.join(out, "ckpt"), exist_ok=True)
        else:
            learner.load_checkpoint(resume)
        res["m2"] = learner.train_step(batches, GROUP)
        _, res["sd2"] = learner.publish(2, PROBES)
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        learner.shutdown()


def _spawn(world_size: int, model_dir: Path, batches, out: Path, resume: Path | None = None):
    out.mkdir(parents=True, exist_ok=True)
    (out / "ckpt").mkdir(exist_ok=True)
    args = (world_size, free_port(), str(model_dir), batches, str(out), None if resume is None else str(resume))
    return mp.spawn(_worker, nprocs=world_size, join=False, args=args)


def _join(ctx) -> None:
    while not ctx.join():
        pass


@pytest.mark.slow
def test_lora_trains_adapters_only_publishes_merged_weights_and_resumes_exactly(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    batches = _batches(model_dir)
    one, two = _spawn(1, model_dir, batches, tmp_path / "w1"), _spawn(2, model_dir, batches, tmp_path / "w2")
    _join(one)
    _join(two)
    resumed = _spawn(2, model_dir, batches, tmp_path / "r2", resume=tmp_path / "w2" / "ckpt")
    _join(resumed)
    r1 = torch.load(tmp_path / "w1" / "rank0.pt", weights_only=False)
    r2 = torch.load(tmp_path / "w2" / "rank0.pt", weights_only=False)
    rr = torch.load(tmp_path / "r2" / "rank0.pt", weights_only=False)

    info = r2["info"]
    assert info["lora_layers"] == 2 * 7  # q/k/v/o + gate/up/down in each of the 2 blocks
    assert 0 < info["trainable_params"] < 0.1 * info["num_params"]

    initial = load_file(str(model_dir / "model.safetensors"))
    sd = r2["sd1"]
    assert set(sd) == set(initial), "the engines must get plain HF names, no adapter tensors"
    moved = {k for k in sd if not torch.equal(sd[k], initial[k])}
    adapted = {k for k in sd if k.endswith(("proj.weight",)) and ".layers." in k}
    assert moved == adapted, f"frozen weights moved: {sorted(moved - adapted)[:4]}"
    assert max(float((sd[k] - r1["sd1"][k]).abs().max()) for k in sd) < 1e-5  # 2 processes == 1
    assert r2["v1"].checksum == state_dict_checksum(sd)

    # KL to the reference: 0 before the first update (adapters start as the identity), > 0 after
    assert abs(r2["m1"]["kl/mean"]) < 1e-6 and r2["m2"]["kl/mean"] > 1e-6

    # what the engines load scores the probes as the learner's adapted model does
    plain = _plain_probe_logprobs(model_dir, sd)
    diff = max(abs(a - b) for p, q in zip(plain, r2["v1"].probe_logprobs) for a, b in zip(p, q))
    assert diff < 1e-5

    # export: the merged model loads in transformers; the adapter dir merged by peft itself agrees
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "w2" / "hf", dtype=torch.float32)
    assert all(torch.equal(exported.state_dict()[k], sd[k]) for k in sd)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    by_peft = PeftModel.from_pretrained(base, tmp_path / "w2" / "hf" / "adapter").merge_and_unload().state_dict()
    assert max(float((by_peft[k] - sd[k]).abs().max()) for k in sd) < 1e-6

    # resume from the step-1 checkpoint: the second update lands on the same weights
    assert max(float((rr["sd2"][k] - r2["sd2"][k]).abs().max()) for k in sd) < 1e-5
    assert max(float((r2["sd2"][k] - sd[k]).abs().max()) for k in sd) > 1e-4  # and it moved them
