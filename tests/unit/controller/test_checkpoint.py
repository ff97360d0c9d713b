"""Checkpoint atomicity and rotation (rl_service/controller/checkpoint.py), the ledger in checkpoints,
and the PPO update's health guards (NaN skip, KL early stop, KL hard limit) on a tiny
single-process Llama. No Ray, no vLLM."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rl_service.config import LearnerConfig
from rl_service.controller import checkpoint
from rl_service.controller.ledger import LedgerError, SampleLedger


def _write(root, step, keep_last=2, payload=b"shards"):
    tmp = checkpoint.begin(root, step)
    (tmp / "learner").mkdir()
    (tmp / "learner" / "data.bin").write_bytes(payload)
    return checkpoint.commit(root, tmp, step, {"step": step}, keep_last)


def test_commit_renames_then_points_latest_and_keeps_last_k(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        final = _write(root, step)
        assert final.name == checkpoint.step_name(step) and checkpoint.is_complete(final)
        assert json.loads((root / "latest").read_text())["step"] == step
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step-000002", "step-000003"]
    assert checkpoint.load_controller_state(root / "step-000003") == {"step": 3}
    assert not list(root.glob(".tmp-*"))


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _write(root, 1)
    _write(root, 2)
    # A writer killed mid-way: shards on disk, no controller state, never renamed.
    partial = checkpoint.begin(root, 3)
    (partial / "learner").mkdir()
    (partial / "learner" / "data.bin").write_bytes(b"half")
    assert checkpoint.latest_checkpoint(root).name == "step-000002"
    assert checkpoint.resolve_resume("auto", tmp_path).name == "step-000002"
    # Killed between the rename and the pointer: the newer complete dir exists, `latest` is old.
    # Either is consistent; the pointer wins because it is what was acknowledged.
    _write(root, 3, keep_last=5)
    (root / "latest").write_text(json.dumps({"checkpoint": "step-000002", "step": 2}))
    assert checkpoint.latest_checkpoint(root).name == "step-000002"
    # A torn / dangling pointer falls back to the newest complete checkpoint.
    (root / "latest").write_text('{"checkpoint": "step-0000')
    assert checkpoint.latest_checkpoint(root).name == "step-000003"
    (root / "latest").write_text(json.dumps({"checkpoint": "step-000009", "step": 9}))
    assert checkpoint.latest_checkpoint(root).name == "step-000003"
    # The next save removes the crashed write's leftovers.
    _write(root, 4)
    assert not list(root.glob(".tmp-*"))


def test_resolve_resume_paths(tmp_path):
    run = tmp_path / "run"
    assert checkpoint.resolve_resume("auto", run) is None  # nothing yet: a fresh start
    ckpt = _write(run / "checkpoints", 5)
    assert checkpoint.resolve_resume(str(ckpt), tmp_path / "other") == ckpt
    assert checkpoint.resolve_resume(str(run), tmp_path / "other") == ckpt
    assert checkpoint.resolve_resume(str(run / "checkpoints"), tmp_path / "other") == ckpt
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.resolve_resume(str(tmp_path / "missing"), run)


def test_ledger_round_trip_keeps_books_balanced():
    led = SampleLedger(2)
    led.issue([0, 1, 2])
    led.mark_trained(["0/0", "0/1"])
    led.mark_dropped([("1/0", "invalid_reward: nan"), ("1/1", "stale")])
    state = json.loads(json.dumps(led.state_dict()))  # it goes through controller.json
    back = SampleLedger(2)
    back.load_state_dict(state)
    assert back.counts() == led.counts() and back.counts()["samples/in_flight"] == 2
    back.mark_trained(["2/0", "2/1"])
    assert back.check()["samples/lost"] == 0
    with pytest.raises(LedgerError, match="trained twice"):
        back.mark_trained(["0/0"])
    with pytest.raises(LedgerError, match="samples per prompt"):
        SampleLedger(4).load_state_dict(state)


# ---------------------------------------------------------------- PPO guards


def _tiny_setup(seed=0, N=8, T=10):
    from rl_service.learner.forward import Models, policy_logprobs
    from rl_service.learner.prepare import RolloutTensors
    from tests.unit.conftest import tiny_llama

    torch.manual_seed(seed)
    policy = tiny_llama()
    models = Models(policy, None, None, torch.device("cpu"), 0, 1)
    ids = torch.randint(0, 32, (N, T))
    am = torch.ones(N, T, dtype=torch.long)
    mask = torch.zeros(N, T - 1)
    mask[:, 4:] = 1.0
    with torch.no_grad():
        old, _ = policy_logprobs(policy, ids, am)
    adv = torch.randn(N, 1).expand(N, T - 1).clone()
    data = RolloutTensors(ids, am, mask, old, old.clone(), adv, None, None)
    return models, data


def _update(models, data, **overrides):
    from rl_service.learner.update import ppo_update

    cfg = LearnerConfig(advantage="grpo", **overrides)
    opt = torch.optim.AdamW(models.policy.parameters(), lr=cfg.lr)
    return ppo_update(models, opt, None, data, cfg, kl_coef=0.0, seed=0)


def test_nan_advantages_skip_every_step_and_leave_weights_alone():
    models, data = _tiny_setup()
    before = {k: v.clone() for k, v in models.policy.state_dict().items()}
    data.advantages[:, 5] = float("nan")  # every row, so every minibatch; e.g. a 1e30 reward whitened into inf - inf
    m = _update(models, data, num_minibatches=2, ppo_epochs=2)
    assert m["train/skipped_steps"] == 4 and m["train/optimizer_steps"] == 0
    assert m["train/trailing_skipped"] == 4
    assert math.isnan(m["grad_norm"])
    after = models.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finite_update_resets_the_trailing_count():
    models, data = _tiny_setup()
    m = _update(models, data, num_minibatches=2)
    assert m["train/skipped_steps"] == 0 and m["train/trailing_skipped"] == 0
    assert m["policy/kl_hard_limit_hit"] == 0 and m["policy/early_stop"] == 0


def test_kl_blowup_stops_epochs_early_and_trips_the_hard_limit():
    models, data = _tiny_setup()
    # A huge learning rate: the first minibatch step wrecks the policy, the next minibatch
    # measures a large KL to the sampling policy.
    m = _update(
        models, data, lr=10.0, num_minibatches=4, ppo_epochs=3, target_kl=0.01, kl_stop_multiple=2.0, kl_hard_limit=None
    )
    assert m["policy/early_stop"] == 1 and m["policy/approx_kl_max"] > 0.02
    assert m["train/optimizer_steps"] + m["train/skipped_steps"] < 12, "stopped before all 12 minibatches"
    assert m["policy/kl_hard_limit_hit"] == 0, "no hard limit configured"

    models, data = _tiny_setup()
    before = {k: v.clone() for k, v in models.policy.state_dict().items()}
    from rl_service.learner.update import ppo_update

    cfg = LearnerConfig(advantage="grpo", lr=10.0, num_minibatches=4, ppo_epochs=3, kl_hard_limit=0.05)
    opt = torch.optim.AdamW(models.policy.parameters(), lr=cfg.lr)
    m = ppo_update(models, opt, None, data, cfg, kl_coef=0.0, seed=0)
    assert m["policy/kl_hard_limit_hit"] == 1 and m["policy/approx_kl_max"] > 0.05
    assert 1 <= m["train/optimizer_steps"] < 12
    # The steps that blew the policy up are undone: the weights the halt checkpoint saves are
    # the ones that generated the data, and the optimizer has no state from the undone steps.
    after = models.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert opt.state_dict()["state"] == {}


def test_small_lr_never_trips_the_kl_guards():
    models, data = _tiny_setup()
    m = _update(models, data, lr=1e-6, num_minibatches=4, ppo_epochs=3, target_kl=0.01, kl_hard_limit=0.05)
    assert m["policy/early_stop"] == 0 and m["policy/kl_hard_limit_hit"] == 0
    assert m["train/optimizer_steps"] == 12


def test_a_checkpoint_of_the_old_config_layout_resumes(tmp_path):
    """controller.json written before the config had variants (flat task with the guess fields,
    `advantage: gae` beside the GAE fields) passes the must-match check of today's config."""
    from rl_service.config import load_config
    from rl_service.controller.state import load_resumable

    old_layout = {
        "seed": 0,
        "task": {
            "name": "addition",
            "digits": 1,
            "num_eval": 52,
            "seed": 1234,
            "guess_low": 0,
            "guess_high": 9,
            "max_turns": 4,
            "turn_penalty": 0.0,
        },
        "rollout": {"samples_per_prompt": 4, "prompts_per_batch": 16, "engine": "hf", "dtype": "float32"},
        "learner": {"advantage": "gae", "gamma": 1.0, "critic_lr": 1e-3},
        "train": {"prompts_per_step": 16, "queue_size": 8},
    }
    ckpt = tmp_path / "step-000002"
    ckpt.mkdir()
    (ckpt / "controller.json").write_text(json.dumps({"step": 2, "config": old_layout}))
    cfg = load_config(
        None, ["task.digits=1", "task.num_eval=52", "rollout.samples_per_prompt=4", "train.prompts_per_step=16"]
    )
    assert load_resumable(ckpt, cfg)["step"] == 2
    with pytest.raises(checkpoint.CheckpointError, match="task"):
        load_resumable(
            ckpt,
            load_config(
                None, ["task.digits=2", "task.num_eval=52", "rollout.samples_per_prompt=4", "train.prompts_per_step=16"]
            ),
        )


# ---------------------------------------------------------------- foreign checkpoints


class _RunsCode:
    """A pickle payload that, when loaded, creates the file `marker` (any code could run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def _real_checkpoint(root):
    """A checkpoint laid out as the learner writes it: DCP shards of a tiny policy and its
    AdamW state (one process), the per-rank torch.save file, the controller state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from tests.unit.conftest import tiny_llama

    policy = tiny_llama()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy(torch.randint(0, 32, (2, 6))).logits.sum().backward()
    opt.step()
    model_sd, opt_sd = get_state_dict(policy, opt)
    tmp = checkpoint.begin(root, 1)
    dcp.save({"policy": model_sd, "policy_opt": opt_sd}, checkpoint_id=str(tmp / "learner"), no_dist=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    local = {"step": 1, "nan_streak": 0, "kl_ctl": {"value": 0.1}, "policy_sched": sched.state_dict()}
    torch.save({**local, "rng": {"torch": torch.get_rng_state()}, "world_size": 1}, tmp / "learner_rank0.pt")
    return checkpoint.commit(root, tmp, 1, {"step": 1}, 2)


@pytest.mark.parametrize("poisoned", ["learner_rank0.pt", "learner/.metadata"])
def test_a_checkpoint_whose_pickles_would_run_code_is_refused_before_loading(tmp_path, poisoned):
    import pickle

    ckpt = _real_checkpoint(tmp_path / "checkpoints")
    assert checkpoint.resolve_resume(str(ckpt), tmp_path / "run") == ckpt  # the real one passes
    assert set(checkpoint.load_policy_weights(ckpt)) >= {"model.embed_tokens.weight", "lm_head.weight"}

    marker = tmp_path / "code-ran"
    target = ckpt / poisoned
    if poisoned.endswith(".pt"):
        torch.save({"step": 1, "rng": _RunsCode(marker)}, target)
    else:  # DCP metadata keeps its classes, one entry smuggles a payload in
        meta = pickle.loads(target.read_bytes())
        meta.storage_meta = _RunsCode(marker)
        target.write_bytes(pickle.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="does not verify"):
        checkpoint.resolve_resume(str(ckpt), tmp_path / "run")  # changed after it was written
    # A checkpoint crafted elsewhere comes with a manifest that matches: the unpickler refuses it.
    manifest = json.loads((ckpt / checkpoint.MANIFEST_FILE).read_text())
    manifest["files"] = {rel: checkpoint._describe(ckpt / rel, manifest["hash"]) for rel in manifest["files"]}
    (ckpt / checkpoint.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match=f"{target.name}.*refusing to load"):
        checkpoint.resolve_resume(str(ckpt), tmp_path / "run")
    if poisoned.endswith(".metadata"):
        with pytest.raises(Exception, match="refusing to load"):
            checkpoint.load_policy_weights(ckpt)  # `rl-service serve --checkpoint` of a run dir
    assert not marker.exists()


def test_a_checkpoint_that_does_not_verify_is_passed_over_for_the_one_before(tmp_path, capsys):
    run = tmp_path / "run"
    _write(run / "checkpoints", 1, payload=b"shards-1")
    two = _write(run / "checkpoints", 2, payload=b"shards-2")
    manifest = json.loads((two / checkpoint.MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == ["controller.json", "learner/data.bin"]
    assert checkpoint.manifest_problem(two) is None
    assert checkpoint.resolve_resume("auto", run) == two

    shard = two / "learner" / "data.bin"
    for damage, problem in (
        (lambda: shard.write_bytes(b"shards-X"), "learner/data.bin does not match its checksum"),
        (lambda: shard.write_bytes(b"sha"), "learner/data.bin has 3 bytes, the manifest says 8"),
        (lambda: shard.unlink(), "learner/data.bin is missing"),
    ):
        damage()
        assert checkpoint.manifest_problem(two) == problem
        assert checkpoint.resolve_resume("auto", run).name == "step-000001"
        assert f"{two} does not verify ({problem})" in capsys.readouterr().err
        with pytest.raises(checkpoint.CheckpointError, match="does not verify"):
            checkpoint.resolve_resume(str(two), run)  # asked for by name: no silent substitute
