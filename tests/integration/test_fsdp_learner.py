"""The FSDP2 learner under real torch.distributed (gloo, 2 spawned processes) vs 1 process.

A 2-process update must equal a 1-process update on the same batch (the loss is
normalised by the GLOBAL token count and scaled for FSDP's gradient averaging), and the
published weights / probe logprobs / checksum must be exactly what a plain transformers
model holding them computes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rl_service.config import AdditionConfig, LearnerConfig, ModelConfig, SFTConfig, TinyModelConfig
from rl_service.infra.env import free_port
from rl_service.learner.learner import Learner
from rl_service.rollout.weight_sync import state_dict_checksum
from rl_service.types import Sample, ScoredBatch
from tests.integration.conftest import tagged_sample

REPO = Path(__file__).resolve().parents[2]
GROUP = 4
PROBES = [[1, 19, 20, 13, 21, 22, 31, 23, 2], [1, 24, 13, 25, 31]]


@pytest.fixture(scope="module")
def model_dir(request) -> Path:
    """The shared tiny model (tests/integration/conftest.py), or the same build made here."""
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        from rl_service.models.build import ensure_model

        cfg = ModelConfig(
            cache_dir=str(REPO / ".cache/test-models"),
            build=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
            sft=SFTConfig(max_steps=50),
        )
        return ensure_model(cfg, AdditionConfig(), seed=0)


def _batches(model_dir: Path) -> list[ScoredBatch]:
    """8 prompts x 4 samples, random responses and 0/1 rewards; one sample dropped (a short group)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    batches = []
    for b in range(2):
        samples, rewards = [], []
        for p in range(4):
            pid = b * 4 + p
            text = f"{rng.randrange(100)}+{rng.randrange(100)}="
            prompt_ids = tuple(tok(text).input_ids)
            for k in range(GROUP):
                if (pid, k) == (5, 2):
                    continue  # dropped by the scorer
                resp = tuple(rng.randrange(3, len(tok)) for _ in range(rng.randint(1, 5))) + (tok.eos_token_id,)
                samples.append(tagged_sample(pid, k, text, prompt_ids, resp))
                rewards.append(float(rng.random() < 0.5))
        batches.append(
            ScoredBatch(
                batch_id=b,
                samples=tuple(samples),
                rewards=tuple(rewards),
                dropped=(("5/2", "raised"),) if b == 1 else (),
                policy_version=0,
                generate_s=0.0,
                reward_s=0.0,
            )
        )
    return batches


def _config(advantage: str) -> LearnerConfig:
    # micro_batch_size 7 with 31 samples: minibatches of 16/15 rows split 8/8 and 8/7 over two
    # ranks, so in one minibatch one rank runs a zero-weight dummy micro-batch.
    # grpo: KL in the loss, and a target_kl so small that the trust region stops after epoch 1.
    if advantage == "gae":
        kl, target_kl = {"estimator": "k1", "placement": "reward", "coef": 0.05}, None
    else:
        kl, target_kl = {"estimator": "k3", "placement": "loss", "coef": 0.1}, 1e-6
    # gae takes the PPO ratio against the (synthetic, -1.0) engine logprobs, grpo against the
    # learner's recomputation: both paths must give 1-process == 2-process. (The NaN check below
    # needs grpo's trust region to see KL 0 when no step was taken, hence "learner" there.)
    behavior = "rollout" if advantage == "gae" else "learner"
    return LearnerConfig(
        num_workers=1,
        backend="gloo",
        kl_hard_limit=None,  # synthetic engine logprobs: the KL guard would (rightly) halt
        advantage={"type": "gae", "critic_lr": 5e-4} if advantage == "gae" else {"type": advantage},
        lr=5e-4,
        ppo_epochs=2,
        num_minibatches=2,
        micro_batch_size=7,
        entropy_coef=0.01,
        kl=kl,
        target_kl=target_kl,
        behavior_logprobs=behavior,
    )


def _with_nan_rewards(batches: list[ScoredBatch]) -> list[ScoredBatch]:
    return [ScoredBatch(**{**b.__dict__, "rewards": tuple(float("nan") for _ in b.rewards)}) for b in batches]


@contextmanager
def _started(cfg: LearnerConfig, model_dir: str, rank: int, world_size: int, port: int) -> Iterator[Learner]:
    """A set-up learner process of a `world_size` gloo group, shut down afterwards."""
    learner = Learner(cfg, model_dir, rank, world_size, "127.0.0.1", port, seed=0)
    try:
        learner.setup()
        yield learner
    finally:
        learner.shutdown()


def _worker(
    rank: int,
    world_size: int,
    port: int,
    model_dir: str,
    cfg: LearnerConfig,
    batches: list[ScoredBatch],
    out: str,
    full: bool = True,
) -> None:
    """One update and its publish (`full`: then the export, a NaN update and one more)."""
    with _started(cfg, model_dir, rank, world_size, port) as learner:
        res = {"metrics": learner.train_step(batches, GROUP)}
        res["version"], res["state_dict"] = learner.publish(1, PROBES)
        if full:
            learner.save_hf(os.path.join(out, "hf"))
            # NaN rewards make every gradient NaN: all 4 steps must be skipped, weights untouched
            # (and the version published above must not change behind its checksum).
            res["nan_metrics"] = learner.train_step(_with_nan_rewards(batches), GROUP)
            _, res["after_nan"] = learner.publish(2, PROBES)
            # the colocated handover's gather: every rank gets its own full copy
            res["every_rank_version"], res["every_rank"] = learner.publish(2, PROBES, every_rank=True)
            learner.train_step(batches, GROUP)  # moves the weights: published dicts must not follow
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))


def _run(model_dir: Path, cfg: LearnerConfig, batches, out: Path, full: bool = True) -> dict[int, list[dict]]:
    """The 1-process and the 2-process learner, started together (their start-up overlaps)."""
    contexts = {}
    for world_size in (1, 2):
        (out / f"w{world_size}").mkdir(parents=True, exist_ok=True)
        contexts[world_size] = mp.spawn(
            _worker,
            nprocs=world_size,
            join=False,
            args=(world_size, free_port(), str(model_dir), cfg, batches, str(out / f"w{world_size}"), full),
        )
    for ctx in contexts.values():
        while not ctx.join():  # raises with the child's traceback if a rank failed
            pass
    return {w: [torch.load(out / f"w{w}" / f"rank{r}.pt", weights_only=False) for r in range(w)] for w in (1, 2)}


def _plain_probe_logprobs(model_dir: Path, state_dict: dict) -> list[list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.load_state_dict(state_dict, strict=True)
    out = []
    with torch.no_grad():
        for p in PROBES:
            ids = torch.tensor([p])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            out.append(logp.gather(-1, ids[0, 1:, None])[:, 0].tolist())
    return out


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_two_processes_match_one(advantage: str, model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    batches = _batches(model_dir)
    cfg = _config(advantage)
    runs = _run(model_dir, cfg, batches, tmp_path)
    one, two = runs[1], runs[2]

    sd1, sd2 = one[0]["state_dict"], two[0]["state_dict"]
    assert two[1]["state_dict"] is None
    assert set(sd1) == set(sd2) and "lm_head.weight" in sd1 and "model.layers.0.self_attn.q_proj.weight" in sd1
    max_diff = max(float((sd1[k] - sd2[k]).abs().max()) for k in sd1)
    initial = load_file(str(model_dir / "model.safetensors"))
    max_change = max(float((sd1[k] - initial[k]).abs().max()) for k in sd1)
    print(f"\n[{advantage}] max |1-proc - 2-proc| = {max_diff:.3g}; max |trained - initial| = {max_change:.3g}")
    assert max_diff < 1e-5
    assert max_change > 9e-4  # 2-4 AdamW steps at lr 5e-4 moved the weights (~lr per step)

    m1, m2 = one[0]["metrics"], two[0]["metrics"]
    assert m2 == two[1]["metrics"]  # averaged over ranks: identical everywhere
    assert m1["samples/trained"] == m2["samples/trained"] == 31
    steps = 4 if advantage == "gae" else 2  # grpo: early stop after epoch 1 (target_kl)
    for m in (m1, m2):
        assert m["train/optimizer_steps"] == steps and m["train/skipped_steps"] == 0
        assert m["policy/early_stop"] == float(advantage == "grpo")
    for k in ("reward/mean", "kl/mean", "policy/approx_kl", "loss/policy", "entropy/mean", "grad_norm"):
        assert abs(m1[k] - m2[k]) < 1e-4, (k, m1[k], m2[k])
    assert ("loss/value" in m1) == (advantage == "gae")
    for res in one + two:
        assert res["nan_metrics"]["train/skipped_steps"] == 4 and res["nan_metrics"]["train/optimizer_steps"] == 0
    for sd, res in ((sd1, one[0]), (sd2, two[0])):
        assert all(torch.equal(sd[k], res["after_nan"][k]) for k in sd)
        assert res["version"].checksum == state_dict_checksum(sd)

    # publish(every_rank=True), the colocated handover: each rank holds the very tensors rank 0
    # published (its own copy, verified where it is loaded against rank 0's checksum), and none
    # follows the update trained after it
    for run in (one, two):
        for res in run:
            assert res["every_rank_version"] == run[0]["every_rank_version"]
            assert res["every_rank_version"].checksum == state_dict_checksum(res["every_rank"])
            assert set(res["every_rank"]) == set(run[0]["after_nan"])
            assert all(torch.equal(t, run[0]["after_nan"][k]) for k, t in res["every_rank"].items())

    assert two[1]["version"] == two[0]["version"]  # rank 1 gets rank 0's checksum and the same probes
    for res, sd in ((one[0], sd1), (two[0], sd2)):
        version = res["version"]
        assert version.checksum == state_dict_checksum(sd)
        assert version.num_bytes == sum(t.numel() * t.element_size() for t in sd.values())
        plain = _plain_probe_logprobs(model_dir, sd)
        probe_diff = max(abs(a - b) for p, q in zip(plain, version.probe_logprobs) for a, b in zip(p, q))
        print(f"[{advantage}] probe |learner - transformers| = {probe_diff:.3g}")
        assert [len(p) for p in version.probe_logprobs] == [len(p) - 1 for p in PROBES]
        assert probe_diff < 1e-5

    # The exported HF directory loads with transformers and holds the published weights.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "w2" / "hf", dtype=torch.float32)
    assert all(torch.equal(exported.state_dict()[k], sd2[k]) for k in sd2)
    assert AutoTokenizer.from_pretrained(tmp_path / "w2" / "hf")("12+34=").input_ids == PROBES[0][:7]


def _with_true_logprobs(model_dir: Path, batches: list[ScoredBatch]) -> list[ScoredBatch]:
    """The batches with response_logprobs = what the start policy really assigns (an exact engine)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for b in batches:
        samples = []
        for s in b.samples:
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            lp = logp.gather(-1, ids[0, 1:, None])[:, 0][len(s.prompt_ids) - 1 :]
            samples.append(Sample(**{**s.__dict__, "response_logprobs": tuple(lp.tolist())}))
        out.append(ScoredBatch(**{**b.__dict__, "samples": tuple(samples)}))
    return out


def _check_every_worker(
    rank: int, port: int, model_dir: str, cfg: LearnerConfig, batches: list[ScoredBatch], out: str
) -> None:
    learner = Learner(cfg, model_dir, rank, 1, "127.0.0.1", port, seed=0)
    try:
        info = learner.setup()
        metrics = [learner.train_step(batches, GROUP)]
        _, sd_after_one = learner.publish(1, PROBES)
        metrics.append(learner.train_step(batches, GROUP))
        _, sd_after_two = learner.publish(2, PROBES)
        torch.save({"info": info, "metrics": metrics, "state_dict": sd_after_one, "state_dict_2": sd_after_two}, out)
    finally:
        learner.shutdown()


def test_skipping_the_old_policy_pass_gives_the_same_update(model_dir: Path, tmp_path: Path) -> None:
    """logprob_check_every: with an exact engine, an update that takes the old logprobs from the
    engine instead of recomputing them moves the weights identically; the check's metrics appear
    exactly on the updates that recompute (every 2nd here: update 0, not update 1)."""
    batches = _with_true_logprobs(model_dir, _batches(model_dir))
    runs = _two_updates(
        model_dir,
        batches,
        tmp_path,
        {every: _config("gae").model_copy(update={"logprob_check_every": every}) for every in (1, 0, 2)},
    )
    checked, skipped, alternate = runs[1], runs[0], runs[2]
    sd1, sd0 = checked["state_dict"], skipped["state_dict"]
    assert max(float((sd1[k] - sd0[k]).abs().max()) for k in sd1) < 1e-5
    # Update 0: the engine logprobs are exact. Update 1 reuses them after the weights moved, so
    # the check must see the drift: proof that it compares against a real recomputation.
    assert checked["metrics"][0]["rollout/logprob_diff_max"] < 1e-4
    assert checked["metrics"][1]["rollout/logprob_diff_max"] > 1e-2
    assert all("rollout/logprob_diff_max" not in m for m in skipped["metrics"])
    assert ["rollout/logprob_diff_max" in m for m in alternate["metrics"]] == [True, False]
    a, b = checked["metrics"][0], skipped["metrics"][0]
    for k in ("kl/mean", "loss/policy", "policy/approx_kl", "grad_norm"):
        assert abs(a[k] - b[k]) < 1e-4, (k, a[k], b[k])


def _two_updates(
    model_dir: Path, batches: list[ScoredBatch], tmp_path: Path, configs: dict[int, LearnerConfig]
) -> dict[int, dict]:
    """Two train steps per config in a 1-process learner (one after the other)."""
    runs = {}
    for key, cfg in configs.items():
        ctx = mp.spawn(
            _check_every_worker,
            nprocs=1,
            join=False,
            args=(free_port(), str(model_dir), cfg, batches, str(tmp_path / f"run{key}.pt")),
        )
        while not ctx.join():
            pass
        runs[key] = torch.load(tmp_path / f"run{key}.pt", weights_only=False)
    return runs


def test_unpenalised_kl_is_measured_every_n_updates_or_never(model_dir: Path, tmp_path: Path) -> None:
    """kl.measure_every with kl.coef 0: the reference pass only feeds kl/*, so skipping it (or not
    building the reference at all, 0) leaves the updates unchanged; kl/* appear exactly on the
    measured updates, and the KL measured after one update is > 0 (a real reference pass).
    With a penalty the reference runs on every update whatever measure_every says."""
    batches = _with_true_logprobs(model_dir, _batches(model_dir))
    base = _config("gae")

    def cfg(every: int, coef: float = 0.0) -> LearnerConfig:
        kl = base.kl.model_copy(update={"coef": coef, "measure_every": every})
        return base.model_copy(update={"kl": kl, "logprob_check_every": 1})

    runs = _two_updates(model_dir, batches, tmp_path, {1: cfg(1), 0: cfg(0), 2: cfg(2), 3: cfg(0, coef=0.05)})
    for every, has_kl in ((1, [True, True]), (0, [False, False]), (2, [True, False]), (3, [True, True])):
        assert ["kl/mean" in m and "kl/seq_mean" in m for m in runs[every]["metrics"]] == has_kl, every
        assert runs[every]["info"]["reference"] == (every != 0), every
    always, never = runs[1], runs[0]
    for key in ("state_dict", "state_dict_2"):
        assert max(float((always[key][k] - never[key][k]).abs().max()) for k in always[key]) < 1e-6
    assert abs(always["metrics"][0]["kl/mean"]) < 1e-6  # the policy still is the reference
    assert abs(always["metrics"][1]["kl/mean"]) > 1e-4  # after one update it is not
    assert abs(runs[2]["metrics"][0]["kl/mean"] - always["metrics"][0]["kl/mean"]) < 1e-6
    # kl.coef 0.05 penalises: a different update from the unpenalised one
    penalised = runs[3]["state_dict_2"]
    assert max(float((penalised[k] - always["state_dict_2"][k]).abs().max()) for k in penalised) > 1e-6


def _sum_by_name_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from rl_service.learner.fsdp import all_reduce_metrics

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # the two ranks build their dicts in opposite orders: names, not positions, must line up
        items = [("loss/policy", 1.0 + rank), ("tokens", 10.0 * (rank + 1)), ("entropy/mean", 0.5)]
        summed = all_reduce_metrics(dict(items if rank == 0 else items[::-1]), torch.device("cpu"))
        torch.save(summed, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metrics_are_summed_over_ranks_by_name(tmp_path: Path) -> None:
    mp.spawn(_sum_by_name_worker, nprocs=2, args=(free_port(), str(tmp_path)))
    for rank in (0, 1):
        summed = torch.load(tmp_path / f"rank{rank}.pt")
        assert summed == {"entropy/mean": 1.0, "loss/policy": 3.0, "tokens": 30.0}


def test_zero_advantage_skip_leaves_the_update_unchanged(model_dir: Path, tmp_path: Path) -> None:
    """learner.skip_zero_advantage on 1 and 2 gloo ranks: groups whose rewards are all equal
    (advantage exactly 0) skip their forward/backward, their tokens stay in the normaliser, and
    the weights equal the full update's. max_grad_norm is huge so that clipping cannot hide a
    wrong normaliser; 2 minibatches x 2 epochs with different shares of skipped rows, so
    AdamW's moments see the per-minibatch scale (a normaliser without the skipped tokens: 1e-3).
    One row per micro-batch, so the rows that run see the same forwards either way: with
    micro-batches of 5 the two runs group and pad the rows differently and their weights
    differed by 1.6e-5: rounding, magnified (we think) by AdamW's ~lr * g / |g| first steps on
    gradient entries that cancel to ~0 under group-centred advantages."""
    batches = _batches(model_dir)
    flat = [(b, i) for b in range(len(batches)) for i in range(len(batches[b].samples))]
    pids = [batches[b].samples[i].prompt_id for b, i in flat]
    # prompts 0, 1 and 5 (the short group) all correct, prompt 6 all wrong: 15 of 31 rows skipped
    fixed = {0: 1.0, 1: 1.0, 5: 1.0, 6: 0.0}
    rewards = [[*b.rewards] for b in batches]
    for (b, i), pid in zip(flat, pids):
        rewards[b][i] = fixed.get(pid, rewards[b][i])
    batches = [ScoredBatch(**{**b.__dict__, "rewards": tuple(r)}) for b, r in zip(batches, rewards)]
    base = LearnerConfig(
        num_workers=1,
        backend="gloo",
        kl_hard_limit=None,  # synthetic engine logprobs: the KL guard would (rightly) halt
        advantage={"type": "grpo"},
        lr=5e-4,
        ppo_epochs=2,
        num_minibatches=2,
        micro_batch_size=1,
        max_grad_norm=1e6,
        behavior_logprobs="learner",
    )
    runs = {
        skip: _run(
            model_dir, base.model_copy(update={"skip_zero_advantage": skip}), batches, tmp_path / str(skip), False
        )
        for skip in (False, True)
    }
    n_skipped = sum(1 for pid in pids if pid in fixed)
    for world_size in (1, 2):
        full, lean = runs[False][world_size][0], runs[True][world_size][0]
        sd_full, sd_lean = full["state_dict"], lean["state_dict"]
        diff = max(float((sd_full[k] - sd_lean[k]).abs().max()) for k in sd_full)
        print(f"\n[{world_size} ranks] max |full - skipped| = {diff:.3g}")
        assert diff < 1e-6
        assert full["metrics"]["train/skipped_zero_adv_samples"] == 0
        assert lean["metrics"]["train/skipped_zero_adv_samples"] == n_skipped == 15
        assert lean["metrics"]["train/skipped_zero_adv_tokens"] > 0
        # the work counts do not depend on the skipping: the same tokens trained / with a gradient
        for key in ("tokens/trained", "tokens/nonzero_grad", "tokens/processed"):
            assert lean["metrics"][key] == full["metrics"][key]
        m = lean["metrics"]
        assert m["tokens/nonzero_grad"] <= m["tokens/trained"] - m["train/skipped_zero_adv_tokens"]
        assert lean["metrics"]["train/optimizer_steps"] == full["metrics"]["train/optimizer_steps"] == 4
        assert abs(lean["metrics"]["loss/policy"] - full["metrics"]["loss/policy"]) < 1e-6
    from safetensors.torch import load_file

    initial = load_file(str(model_dir / "model.safetensors"))
    one, two = runs[True][1][0]["state_dict"], runs[True][2][0]["state_dict"]
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 9e-4  # 4 AdamW steps moved it
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5


def test_sequence_packing_leaves_the_update_unchanged(model_dir: Path, tmp_path: Path) -> None:
    """learner.max_tokens_per_microbatch on 1 and 2 gloo ranks, GAE (critic, KL in the reward,
    entropy bonus): micro-batches of <= 40 tokens packed into one row each give the update of
    the padded micro-batches (each rank's packed plan is padded to the busiest rank's count).
    Measured: 1.6e-7 on 1 rank (the packed rows run other matmul shapes, so they round apart)."""
    batches = _batches(model_dir)
    base = _config("gae")
    runs = {
        budget: _run(
            model_dir,
            base.model_copy(update={"max_tokens_per_microbatch": budget}),
            batches,
            tmp_path / str(budget),
            False,
        )
        for budget in (None, 40)
    }
    from safetensors.torch import load_file

    initial = load_file(str(model_dir / "model.safetensors"))
    for world_size in (1, 2):
        padded, packed = runs[None][world_size][0], runs[40][world_size][0]
        sd_padded, sd_packed = padded["state_dict"], packed["state_dict"]
        diff = max(float((sd_padded[k] - sd_packed[k]).abs().max()) for k in sd_padded)
        moved = max(float((sd_packed[k] - initial[k]).abs().max()) for k in sd_packed)
        print(f"\n[{world_size} ranks] max |padded - packed| = {diff:.3g}, max |trained - initial| = {moved:.3g}")
        assert diff < 1e-6 and moved > 9e-4
        assert padded["metrics"]["train/pad_frac_saved"] == 0 and padded["metrics"]["train/pad_frac"] > 0
        assert packed["metrics"]["train/pad_frac"] == 0 and packed["metrics"]["train/pad_frac_saved"] > 0
        for k in ("kl/mean", "value/explained_var", "loss/policy", "loss/value", "grad_norm", "entropy/mean"):
            assert abs(padded["metrics"][k] - packed["metrics"][k]) < 1e-5, k
