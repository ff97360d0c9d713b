"""One chaos trial, compared with the uninterrupted run: the recipe that tests/integration/
test_chaos.py (the suite's 10 kills) and bench/chaos_soak.py (more seeds, random plans) share.

    run_train(run_root, "U", model_dir)                          the uninterrupted run
    run_train(run_root, "C", model_dir, plan=[...], seed=s)      the same run under chaos.py's kills
    run_train(run_root, "C", model_dir, resume="auto")           after the driver's SIGKILL: resume
    differences(U dir, C dir)                                    what C ended with that U did not

The run (configs/ci/tiny.yaml): lag 0 (strictly on-policy, so a run is deterministic), a
checkpoint after every step, STEPS steps, 1-digit sums with 52 held out, which leaves 48
training prompts: one data epoch is exactly 3 steps of 16 prompts.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from rl_service.controller import checkpoint
from rl_service.infra.files import read_jsonl
from rl_service.testing.chaos import ROLES, Chaos

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ci" / "tiny.yaml"
PLUGIN = f"{REPO / 'tests' / 'integration' / 'partial_credit.py'}:leading_digits"
STEPS = 16
SAMPLES = STEPS * 16 * 4
"""Samples a complete run trains: 16 prompts a step x 4 samples a prompt."""


def train_args(run_root: Path, name: str, model_dir: Path, *extra: str) -> list[str]:
    """The `rl-service train` command line of a trial run (a user's command, as a subprocess)."""
    return [
        sys.executable,
        "-m",
        "rl_service.cli",
        "train",
        str(CONFIG),
        f"name={name}",
        f"run_root={run_root}",
        f"model.path={model_dir}",
        f"train.steps={STEPS}",
        "train.max_policy_lag=0",
        "train.checkpoint_every=1",
        "train.keep_last=12",
        "train.max_restarts=4",
        "task.digits=1",
        "task.num_eval=52",
        "train.eval_every=0",
        "tracking.ray_metrics=false",
        f"reward.fn={PLUGIN}",
        *extra,
    ]


def run_train(
    run_root: Path,
    name: str,
    model_dir: Path,
    *extra: str,
    resume: str | None = None,
    env: dict | None = None,
    plan: list[str] | None = None,
    seed: int = 0,
    timeout_s: float = 600,
) -> tuple[subprocess.CompletedProcess, float, Chaos]:
    """Run one trial run with `plan`'s kills (none: a plain run). Its stderr is kept beside the run
    (`<run_root>/<name>-<k>.stderr`) for a post-mortem. The Chaos returned knows every process
    the run had (`leftovers`)."""
    args = train_args(run_root, name, model_dir, *extra)
    if resume:
        args += ["--resume", resume]
    t0 = time.perf_counter()
    popen = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})}
    )
    chaos = Chaos(popen.pid, run_root / name / "metrics.jsonl", plan or [], seed, STEPS).start()
    try:
        out, err = popen.communicate(timeout=timeout_s)
    finally:
        chaos.stop()
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / f"{name}-{len(list(run_root.glob(f'{name}-*.stderr')))}.stderr").write_text(err)
    return subprocess.CompletedProcess(args, popen.returncode, out, err), time.perf_counter() - t0, chaos


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The run's one-line `error:` and the end of its stderr (the full stderr is kept beside the run)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return f"{lines[-1] if lines else 'no error line'} | ... {proc.stderr[-1500:]}"


def rows(path: Path) -> list[dict]:
    return read_jsonl(path)[0]  # a torn last line is no row: it shows up as a missing step


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def final_weights(run_dir: Path) -> dict:
    return checkpoint.load_policy_weights(checkpoint.latest_checkpoint(run_dir / "checkpoints"))


def differences(u_dir: Path, c_dir: Path, steps: int = STEPS, tolerance: float = 1e-5) -> list[str]:
    """What the finished run `c_dir` (of `steps` steps) ended with that the uninterrupted `u_dir`
    had at that step: the ledger (nothing lost, stale or trained twice), each step once with U's
    batches and prompts, every metrics row, the policy within `tolerance` of U's checkpoint of
    that step. Empty: the same run."""
    found = []
    want = steps * SAMPLES // STEPS
    summary = json.loads((c_dir / "summary.json").read_text())
    if summary["samples/lost"] or summary["samples/dropped_stale"]:
        found.append(f"ledger: lost {summary['samples/lost']}, stale {summary['samples/dropped_stale']}")
    if not summary["samples/trained"] == summary["samples/issued"] == want:
        found.append(f"ledger: trained {summary['samples/trained']}, issued {summary['samples/issued']}, not {want}")
    if summary["policy_version"] != steps:
        found.append(f"policy version {summary['policy_version']}, not {steps}")
    c_consumed, u_consumed = rows(c_dir / "consumed.jsonl"), rows(u_dir / "consumed.jsonl")[:steps]
    if [r["step"] for r in c_consumed] != list(range(1, steps + 1)):
        found.append(f"consumed.jsonl steps {[r['step'] for r in c_consumed]}: not each step once")
    elif c_consumed != u_consumed:
        bad = [a["step"] for a, b in zip(c_consumed, u_consumed) if a != b]
        found.append(f"consumed.jsonl: other batches or prompts than U's at steps {bad}")
    metric_steps = [r["step"] for r in rows(c_dir / "metrics.jsonl")]
    if metric_steps != list(range(1, steps + 1)):
        found.append(f"metrics.jsonl steps {metric_steps}")
    u_weights = checkpoint.load_policy_weights(u_dir / "checkpoints" / checkpoint.step_name(steps))
    diff = max_diff(u_weights, final_weights(c_dir))
    if not diff < tolerance:
        found.append(f"final weights differ from U's step {steps} by {diff:.2e} >= {tolerance:g}")
    return found


def random_plan(rng: random.Random, kills: int) -> list[str]:
    """`kills` roles in random order, each of rollout/reward/queue/learner at least once, the
    driver last (its death ends the run)."""
    roles = [r for r in ROLES if r != "driver"]
    assert kills >= len(roles) + 1, kills
    plan = roles + [rng.choice(roles) for _ in range(kills - 1 - len(roles))]
    rng.shuffle(plan)
    return plan + ["driver"]
