"""Component crashes injected into real runs (vLLM engines, Ray actors, 2 FSDP2 learner processes).

Three runs of configs/ci/tiny.yaml (lag 0, so a run is deterministic and comparable):

    U   uninterrupted, 5 steps
    F   the same run with four faults ($RL_SERVICE_FAULT, rl_service/testing/faults.py), one per step:
          step 2  kill_rollout:3   the only rollout worker SIGKILLs itself generating batch 3
                                   (at policy version 1: its replacement must load version 1)
          step 3  kill_scorer:4    the only reward scorer SIGKILLs itself holding batch 4
          step 4  kill_queue:7     the prompt-queue actor is killed with batch 7 in it
          step 4  kill_learner:4   the last learner process is killed during step 4's update
                                   -> the run restarts from its step-2 checkpoint, same call
    E   a scorer that dies on batch 1 every time, train.max_restarts=1 -> the run fails and
        the error names batch 1

F must train exactly what U trained (same prompts, same order, each once), balance its ledger
with nothing stale, lost or trained twice, report every restart, and end with U's weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from rl_service.controller import checkpoint
from tests.integration.conftest import train_command

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = f"{Path(__file__).parent / 'partial_credit.py'}:leading_digits"
STEPS = 5


def _train(
    run_root: Path,
    name: str,
    model_dir: Path,
    *extra: str,
    fault: str = "",
) -> tuple[subprocess.CompletedProcess, float]:
    # 1-digit task with 52 eval problems: 48 training prompts, one data epoch = 3 steps of 16.
    args = train_command(
        f"name={name}",
        f"run_root={run_root}",
        f"model.path={model_dir}",
        f"train.steps={STEPS}",
        "train.max_policy_lag=0",
        "train.checkpoint_every=2",
        "task.digits=1",
        "task.num_eval=52",
        "rollout.num_workers=1",
        "tracking.ray_metrics=false",
        f"reward.fn={PLUGIN}",
        *extra,
    )
    env = {k: v for k, v in os.environ.items() if k != "RL_SERVICE_FAULT"}
    if fault:
        env["RL_SERVICE_FAULT"] = fault
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return proc, time.perf_counter() - t0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_run_survives_rollout_scorer_queue_and_learner_crashes(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    u_proc, u_s = _train(runs, "U", tiny_model_dir)
    assert u_proc.returncode == 0, u_proc.stderr[-3000:]
    f_proc, f_s = _train(runs, "F", tiny_model_dir, fault="kill_rollout:3,kill_scorer:4,kill_queue:7,kill_learner:4")
    assert f_proc.returncode == 0, f_proc.stderr[-3000:]
    u_dir, f_dir = runs / "U", runs / "F"

    # Every fault fired exactly once (a replaced actor does not kill itself again).
    assert sorted(p.name for p in (f_dir / "faults").iterdir()) == [
        "kill_learner:4#0",
        "kill_queue:7#0",
        "kill_rollout:3#0",
        "kill_scorer:4#0",
    ]
    summary = json.loads((f_dir / "summary.json").read_text())
    assert {k: summary[f"faults/restarts_{k}"] for k in ("rollout", "reward", "queue", "learner")} == {
        "rollout": 1,
        "reward": 1,
        "queue": 1,
        "learner": 1,
    }
    assert summary["faults/restarted_from_steps"] == [2] and summary["resumed_from_step"] == 2
    assert "learner failed at step 4" in f_proc.stderr and "step-000002" in f_proc.stderr
    events = summary["faults/events"]
    by_step = {(e["kind"], e["step"]): e for e in events}
    # Rollout worker died on batch 3 (step 2 = batches 2, 3): batch 3 put again.
    assert by_step[("component", 2)]["replaced"]["rollout"] == 1
    assert 3 in by_step[("component", 2)]["batches_regenerated"]
    # Scorer died holding batch 4: batch 4 scored again.
    assert by_step[("component", 3)]["replaced"]["reward"] == 1
    assert 4 in by_step[("component", 3)]["batches_regenerated"]
    # The queue died holding batch 7 (the worker was busy with batch 6): batch 7 put again, not skipped.
    assert by_step[("component", 4)]["replaced"]["queue"] == 1
    assert 7 in by_step[("component", 4)]["batches_regenerated"]
    assert by_step[("learner", 4)]["resumed_from_step"] == 2

    # Nothing lost, nothing trained twice, nothing stale: the replacement worker generated batch 3
    # with the current policy (version 1); base weights would have made it stale under lag 0.
    assert summary["samples/lost"] == 0 and summary["samples/dropped_stale"] == 0
    assert summary["samples/trained"] == summary["samples/issued"] == STEPS * 16 * 4
    assert summary["policy_version"] == STEPS
    f_consumed, u_consumed = _rows(f_dir / "consumed.jsonl"), _rows(u_dir / "consumed.jsonl")
    assert [r["step"] for r in f_consumed] == list(range(1, STEPS + 1)), "each step once, redone steps replaced"
    assert [p for r in f_consumed for p in r["prompt_ids"]] == list(range(STEPS * 16))
    assert f_consumed == u_consumed, "same batches and prompts at every step as the uninterrupted run"
    f_rows, u_rows = _rows(f_dir / "metrics.jsonl"), _rows(u_dir / "metrics.jsonl")
    assert [r["step"] for r in f_rows] == list(range(1, STEPS + 1))
    assert all(r["policy/lag_mean"] == 0 for r in f_rows)
    # Regenerated batches were sampled and scored exactly as the first time (seeded by batch id).
    assert [r["reward/mean"] for r in f_rows] == pytest.approx([r["reward/mean"] for r in u_rows], abs=1e-6)
    u_w = checkpoint.load_policy_weights(checkpoint.latest_checkpoint(u_dir / "checkpoints"))
    f_w = checkpoint.load_policy_weights(checkpoint.latest_checkpoint(f_dir / "checkpoints"))
    assert max((u_w[k] - f_w[k]).abs().max().item() for k in u_w) < 1e-5, "F ends with U's policy"

    step_s = {r["step"]: r["timing_s/step"] for r in f_rows}
    base = sorted(r["timing_s/step"] for r in u_rows)[STEPS // 2]
    print(f"\n[faults] U {u_s:.1f}s, F {f_s:.1f}s (+{f_s - u_s:.1f}s); median step {base:.2f}s")
    for e in events:
        print(
            f"[faults]   {e['kind']} at step {e['step']}: recover {e['recover_s']:.1f}s, "
            f"step took {step_s.get(e['step'], float('nan')):.1f}s, "
            + (
                f"batches regenerated {e['batches_regenerated']}"
                if e["kind"] == "component"
                else f"resumed from step {e['resumed_from_step']}, completed steps redone {e['steps_redone']}"
            )
        )


@pytest.mark.slow
def test_scorer_out_of_restarts_names_the_batch(tmp_path, tiny_model_dir):
    proc, secs = _train(tmp_path / "runs", "E", tiny_model_dir, "train.max_restarts=1", fault="kill_scorer:1x2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: "))
    m = re.search(
        r"reward-0 died 2 times, more than train\.max_restarts=1; batches in flight at every "
        r"one of its deaths: \[([\d, ]*)\]",
        line,
    )
    assert m, proc.stderr[-6000:]
    assert 1 in [int(b) for b in m[1].split(",")], line
    print(f"\n[faults] scorer out of restarts: failed after {secs:.1f}s: {line}")
