"""Training-health guards injected into real runs (vLLM, Ray, 2 FSDP2 learners, via the CLI).

    NaN/inf: a reward plug-in returning 1e30 makes the value loss overflow to inf every
             minibatch -> each optimizer step skipped and counted; after train.max_nan_steps
             in a row the run halts with a checkpoint and a message.
    KL blow-up: learner.lr=100 -> the second minibatch measures a huge KL to the sampling
             policy -> above learner.kl_hard_limit the run halts with a checkpoint and a message.
The reward plug-in lives in this file (`reward.fn=<this file>:huge_reward`).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from rl_service.controller import checkpoint
from tests.integration.conftest import train_command

ROOT = Path(__file__).resolve().parents[2]


def huge_reward(prompt: str, completion: str, **_) -> float:
    """Finite, so the scorer accepts it, but its square overflows float32 in the value loss."""
    return 1e30


def _train(run_root: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    args = train_command(
        f"run_root={run_root}",
        "train.steps=5",
        "train.max_policy_lag=0",
        "rollout.num_workers=1",
        "tracking.ray_metrics=false",
        *extra,
    )
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return proc, time.perf_counter() - t0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_nan_steps_are_skipped_then_the_run_halts_with_a_checkpoint(tmp_path, tiny_model_dir):
    proc, secs = _train(
        tmp_path,
        f"model.path={tiny_model_dir}",
        f"reward.fn={Path(__file__)}:huge_reward",
        "train.max_nan_steps=3",
        "learner.num_minibatches=2",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "TrainingHalted" in proc.stderr and "train.max_nan_steps=3" in proc.stderr
    run = tmp_path / "ci-tiny"
    rows = _rows(run / "metrics.jsonl")
    # 2 minibatches a step, all skipped: streak 2 after step 1, 4 >= 3 after step 2 -> halt.
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["train/skipped_steps"] for r in rows] == [2, 2]
    assert [r["train/nan_streak"] for r in rows] == [2, 4]
    assert all(r["train/optimizer_steps"] == 0 for r in rows)
    ckpt = checkpoint.latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000002"
    summary = json.loads((run / "summary.json").read_text())
    assert "max_nan_steps" in summary["halted"] and summary["samples/lost"] == 0
    # No optimizer step ran, so the checkpointed policy is still the starting one.
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    saved = checkpoint.load_policy_weights(ckpt)
    assert max((saved[k] - start[k]).abs().max().item() for k in saved) == 0.0
    print(f"\n[faults] NaN halt after 2 steps: {secs:.1f}s")


@pytest.mark.slow
def test_kl_blowup_halts_with_a_checkpoint(tmp_path, tiny_model_dir):
    proc, secs = _train(
        tmp_path,
        f"model.path={tiny_model_dir}",
        "learner.lr=100",
        "learner.kl_hard_limit=1.0",
        "learner.num_minibatches=2",
        f"reward.fn={Path(__file__).parent / 'partial_credit.py'}:leading_digits",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "TrainingHalted" in proc.stderr and "learner.kl_hard_limit=1.0" in proc.stderr
    run = tmp_path / "ci-tiny"
    rows = _rows(run / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["policy/kl_hard_limit_hit"] == 1 and rows[0]["policy/approx_kl_max"] > 1.0
    ckpt = checkpoint.latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000001"
    assert json.loads((run / "summary.json").read_text())["samples/lost"] == 0
    # Decided before the blowing-up step, and the update's first step undone: the halt
    # checkpoint holds the policy that generated the batch (here the starting one), not the wreck.
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    saved = checkpoint.load_policy_weights(ckpt)
    assert max((saved[k] - start[k]).abs().max().item() for k in saved) == 0.0
    print(f"\n[faults] KL halt after 1 step: {secs:.1f}s")
