"""The full distributed loop, for a few steps, on the tiny model with real vLLM engines,
real Ray actors and 2 FSDP2 learner processes, driven through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import train_command

ROOT = Path(__file__).resolve().parents[2]

REQUIRED = [
    "step",
    "policy_version",
    "reward/mean",
    "reward/std",
    "kl/mean",
    "entropy/mean",
    "policy/clipfrac",
    "loss/policy",
    "loss/value",
    "response_length/mean",
    "timing_s/generate",
    "timing_s/reward",
    "timing_s/train",
    "timing_s/weight_sync",
    "timing_s/step",
    "perf/tokens_per_s",
    "samples/trained",
    "samples/dropped_stale",
]


KEY, DSN_PASSWORD = "sk-loop-91c3e7", "pw-loop-5d2a"
"""Secrets given to the run: none may appear in any file of its run dir or in its output."""


@pytest.mark.slow
def test_train_cli_runs_full_loop(tmp_path, tiny_model_dir):
    steps = 3
    proc = subprocess.run(
        train_command(
            f"run_root={tmp_path}",
            f"train.steps={steps}",
            f"model.path={tiny_model_dir}",
            f"reward.fn={Path(__file__).parent / 'partial_credit.py'}:leading_digits",
            "train.checkpoint_every=2",
            "rollout.num_workers=2",
            f"serve.api_key={KEY}",
            f"serve.feedback_dsn=postgresql://fb:{DSN_PASSWORD}@127.0.0.1:1/feedback",
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ci-tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["policy_version"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, missing
        assert r["weight_sync/probe_max_diff"] < 1e-4
        assert r["policy/lag_mean"] <= 1
    assert any(r["reward/std"] > 0 for r in rows), "the plug-in reward gave no signal"
    summary = json.loads((run / "summary.json").read_text())
    n, pps = 4, 16  # samples_per_prompt, prompts_per_step in configs/ci/tiny.yaml
    assert summary["samples/lost"] == 0 and summary["samples/in_flight"] == 0
    assert summary["samples/issued"] == steps * pps * n
    assert (
        summary["samples/trained"] + summary["samples/dropped_invalid"] + summary["samples/dropped_stale"]
        == steps * pps * n
    )
    assert rows[-1]["samples/trained"] == summary["samples/trained"]
    assert 0.0 <= summary["eval/accuracy_start"] <= 1.0 and 0.0 <= summary["eval/accuracy_end"] <= 1.0
    assert (run / "config.yaml").is_file()
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "controller.json" for p in files), "no checkpoint was written to look into"
    leaks = [str(p) for p in files if any(s.encode() in p.read_bytes() for s in (KEY, DSN_PASSWORD))]
    assert not leaks and KEY not in proc.stdout + proc.stderr, leaks

    # The final policy is an HF directory loadable by transformers, with the trained weights.
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [(a - b).abs().max().item() for a, b in zip(final.state_dict().values(), start.state_dict().values())]
    assert max(diffs) > 0, "final weights equal the starting weights: nothing was trained"

    # ... and by vLLM (own process: one in-process engine per process).
    check = (
        "import sys; from rl_service.rollout.engine import VLLMEngine; "
        "e = VLLMEngine(sys.argv[1]); out = e.generate(['12+34='], n=1, max_new_tokens=4, temperature=0); "
        "print('TOKENS', len(out[0][0].token_ids))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check, str(run / "final")], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0 and "TOKENS" in proc.stdout, proc.stderr[-2000:]
