"""Exact resume, proven on real runs (vLLM engines, Ray actors, 2 FSDP2 learner processes).

Three runs share one set-up (configs/ci/tiny.yaml, lag 0 so the run is deterministic):

    A   uninterrupted, 4 steps, a checkpoint after every step, keep the last 3
    B   --resume A/checkpoints/step-000002 (the data-epoch boundary: an epoch is 3 steps),
        SIGKILLed by the fault hook while writing the step-4 checkpoint (driver killed
        mid-write: step-4 shards on disk, not committed)
    B2  --resume auto on B's run dir (second resume in a row) with 2 rollout workers
        instead of 1: must continue from step 3, the last complete checkpoint

Checked: the same prompts consumed at every step in the same order, the same ledger
counters, equal policy weights after the resumed step, 0 samples lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from rl_service.controller import checkpoint
from tests.integration.conftest import train_command

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = f"{Path(__file__).parent / 'partial_credit.py'}:leading_digits"
STEPS = 4


def _train(
    run_root: Path, name: str, model_dir: Path, *extra: str, resume: str | None = None, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    # task.num_eval=52 of the 100 one-digit pairs leaves 48 training prompts: one data epoch
    # is exactly 3 steps of 16 prompts, so step 2's checkpoint sits on the epoch boundary.
    args = train_command(
        f"name={name}",
        f"run_root={run_root}",
        f"model.path={model_dir}",
        f"train.steps={STEPS}",
        "train.max_policy_lag=0",
        "train.checkpoint_every=1",
        "train.keep_last=3",
        "task.digits=1",
        "task.num_eval=52",
        "rollout.num_workers=1",
        "tracking.ray_metrics=false",
        f"reward.fn={PLUGIN}",
        *extra,
    )
    if resume:
        args += ["--resume", resume]
    t0 = time.perf_counter()
    popen = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    seen = _watch_descendants(popen)
    out, err = popen.communicate(timeout=600)
    _reap(seen)
    return subprocess.CompletedProcess(args, popen.returncode, out, err), time.perf_counter() - t0


def _watch_descendants(popen: subprocess.Popen) -> dict:
    """Record every process the run starts (Ray's head, agents, actors) while it runs, so
    whatever a SIGKILLed driver leaves behind can be stopped by pid afterwards."""
    seen: dict[int, psutil.Process] = {}

    def poll() -> None:
        root = psutil.Process(popen.pid)
        while popen.poll() is None:
            try:
                for c in root.children(recursive=True):
                    seen.setdefault(c.pid, c)
            except psutil.Error:
                pass
            time.sleep(0.5)

    threading.Thread(target=poll, daemon=True).start()
    return seen


def _reap(seen: dict, grace_s: float = 15.0) -> None:
    deadline = time.monotonic() + grace_s
    alive = [p for p in seen.values() if p.is_running()]  # is_running also checks the create time
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if p.is_running()]
    for p in alive:
        p.kill()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_resume_is_exact_after_kill_mid_checkpoint(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    a_proc, a_s = _train(runs, "A", tiny_model_dir)
    assert a_proc.returncode == 0, a_proc.stderr[-3000:]
    a_dir, b_dir = runs / "A", runs / "B"
    a_ckpts = a_dir / "checkpoints"
    # keep-last-3 rotation; `latest` names the final step
    assert [p.name for p in checkpoint.complete_checkpoints(a_ckpts)] == [f"step-00000{i}" for i in (2, 3, 4)]
    assert checkpoint.latest_checkpoint(a_ckpts).name == "step-000004"
    a_consumed = _rows(a_dir / "consumed.jsonl")
    assert [r["step"] for r in a_consumed] == [1, 2, 3, 4]
    ids = [p for r in a_consumed for p in r["prompt_ids"]]
    assert ids == list(range(64)), "each prompt trained once, in stream order"
    boundary = checkpoint.load_controller_state(a_ckpts / "step-000002")["stream"]
    assert boundary == {"epoch": 0, "index": 48, "next_id": 48}, "step 2 should sit on the epoch boundary"

    # B: resume from A's step 2; the driver SIGKILLs itself while writing the step-4 checkpoint.
    b_proc, b_s = _train(
        runs, "B", tiny_model_dir, resume=str(a_ckpts / "step-000002"), env={"RL_SERVICE_FAULT": "kill_in_checkpoint:4"}
    )
    assert b_proc.returncode == -9, (b_proc.returncode, b_proc.stderr[-3000:])
    b_ckpts = b_dir / "checkpoints"
    assert (b_ckpts / ".tmp-step-000004" / "learner").is_dir(), "the step-4 write was cut off mid-way"
    assert checkpoint.latest_checkpoint(b_ckpts).name == "step-000003"
    # Step 3 after a resume at the epoch boundary equals step 3 of the uninterrupted run.
    w_a3 = checkpoint.load_policy_weights(a_ckpts / "step-000003")
    w_b3 = checkpoint.load_policy_weights(b_ckpts / "step-000003")
    w_a2 = checkpoint.load_policy_weights(a_ckpts / "step-000002")
    assert _max_diff(w_a3, w_a2) > 1e-4, "step 3 changed nothing: the comparison below would be vacuous"
    assert _max_diff(w_a3, w_b3) < 1e-5

    # B2: --resume auto picks step 3 (the partial step-4 dir is ignored), 2 rollout workers now.
    b2_proc, b2_s = _train(runs, "B", tiny_model_dir, "rollout.num_workers=2", resume="auto")
    assert b2_proc.returncode == 0, b2_proc.stderr[-3000:]
    assert f"resuming from {b_ckpts / 'step-000003'}" in b2_proc.stdout
    assert not (b_ckpts / ".tmp-step-000004").exists(), "the crashed write's leftover is cleaned up"
    b_consumed = _rows(b_dir / "consumed.jsonl")
    assert b_consumed == a_consumed[2:], "same batches and prompts, same order, no step twice"
    b_metrics = _rows(b_dir / "metrics.jsonl")
    assert [r["step"] for r in b_metrics] == [3, 4], "the crashed run's step-4 row was replaced"
    a_sum, b_sum = (json.loads((d / "summary.json").read_text()) for d in (a_dir, b_dir))
    counters = [k for k in a_sum if k.startswith("samples/")]
    assert {k: b_sum[k] for k in counters} == {k: a_sum[k] for k in counters}
    assert b_sum["samples/lost"] == 0 and b_sum["samples/trained"] == STEPS * 16 * 4
    assert b_sum["policy_version"] == a_sum["policy_version"] == STEPS
    assert b_sum["resumed_from_step"] == 3
    print(f"\n[resume] A {a_s:.1f}s; B (killed in step-4 checkpoint) {b_s:.1f}s; B2 resume {b2_s:.1f}s, steps redone 1")
