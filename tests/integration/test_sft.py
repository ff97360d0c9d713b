"""`rl-service sft` through the CLI: real Ray actors, 2 FSDP2 learner processes, a random-init tiny
model, a JSONL dataset written here (reverse three digits: `381>` -> `183`), then RL from its output.

What must hold: the eval accuracy (greedy, scored with the run's reward) rises from ~0; the target
stops training before max_steps; runs/<name>/final is an HF directory that transformers loads and
whose greedy completions score what the summary says; the config loader accepts it as model.path;
`rl-service train` starts from it; bad input exits 2 with one line before Ray starts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import REPO

TARGET, MAX_STEPS = 0.6, 300


def _write_rows(path: Path, n: int, rng: random.Random) -> None:
    with path.open("w") as f:
        for _ in range(n):
            s = "".join(rng.choice("0123456789") for _ in range(3))
            # `answer` reaches the reward as a keyword argument (addition_exact compares with it)
            f.write(json.dumps({"prompt": f"{s}>", "response": s[::-1], "answer": s[::-1]}) + "\n")


def _config(tmp: Path) -> Path:
    cfg = tmp / "sft.yaml"
    cfg.write_text(
        f"""
name: rev
run_root: {tmp / "runs"}
seed: 0
task: {{name: dataset, train: {tmp / "train.jsonl"}, eval: {tmp / "eval.jsonl"}}}
model:
  cache_dir: {tmp / "models"}
  build: {{hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}}
  sft: {{max_steps: {MAX_STEPS}, batch_size: 32, lr: 3.0e-3, eval_every: 10, target_accuracy: {TARGET}}}
rollout:
  engine: vllm
  num_workers: 1
  resources: {{num_cpus: 0.5}}
  samples_per_prompt: 4
  max_new_tokens: 5
  prompts_per_batch: 8
reward: {{fn: addition_exact, num_scorers: 1, resources: {{num_cpus: 0.25}}}}
learner:
  num_workers: 2
  resources: {{num_cpus: 0.5}}
  advantage: grpo
  lr: 1.0e-4
train: {{steps: 2, prompts_per_step: 8, max_policy_lag: 1, queue_size: 4}}
"""
    )
    return cfg


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl_service.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run dir) of one `rl-service sft` run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    _write_rows(tmp / "train.jsonl", 400, rng)
    _write_rows(tmp / "eval.jsonl", 50, rng)
    cfg = _config(tmp)
    proc = _cli("sft", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy:" in proc.stdout and "stopped: target_accuracy" in proc.stdout, proc.stdout[-2000:]
    return cfg, tmp / "runs" / "rev"


def test_sft_learns_stops_at_target_and_exports(sft_run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.config import load_config
    from rl_service.controller.evaluate import EvalReward
    from rl_service.models.evaluate import greedy_generate_ids
    from rl_service.tasks import bind_task, make_task

    cfg_path, run = sft_run
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print(
        f"\nsft: accuracy {summary['eval/accuracy_start']:.2f} -> {summary['eval/accuracy_end']:.2f} in "
        f"{summary['steps']} steps; wall {summary['wall_s']:.1f} s (setup {summary['timing_s/setup']:.1f}, "
        f"train {summary['timing_s/train']:.1f}, eval {summary['timing_s/eval']:.1f})"
    )
    assert summary["eval/accuracy_start"] <= 0.1  # a random-init model reverses nothing
    assert summary["eval/accuracy_end"] >= TARGET and summary["stopped"] == "target_accuracy"
    assert summary["steps"] < MAX_STEPS and summary["steps"] % 10 == 0  # stopped at the first eval past it
    assert [r["step"] for r in rows] == list(range(1, summary["steps"] + 1))
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == list(range(10, summary["steps"] + 1, 10))
    assert all(r["eval/accuracy"] < TARGET for r in evals[:-1]) and evals[-1]["eval/accuracy"] >= TARGET
    assert rows[-1]["loss/sft"] < 0.5 * rows[0]["loss/sft"]
    assert rows[-1]["epoch"] >= 1  # 32-row batches over 400 rows: several epochs
    assert summary["examples"] == 400 and summary["eval_prompts"] == 50 and summary["learner_processes"] == 2

    # runs/<name>/final: transformers loads it, and its greedy completions score the final accuracy
    final = run / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        f.name for f in final.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(final)
    cfg = load_config(str(cfg_path), [f"model.path={final}"])  # accepted as model.path
    task = bind_task(make_task(cfg.task), str(final), cfg.rollout.max_new_tokens)
    prompts = task.eval_prompts
    ids = greedy_generate_ids(model, [list(p.token_ids) for p in prompts], tok.pad_token_id, tok.eos_token_id, 5)
    score = EvalReward(cfg)
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    solved = sum(score(p, t) >= 1.0 for p, t in zip(prompts, texts)) / len(prompts)
    assert solved == summary["eval/accuracy_end"]


def test_rl_starts_from_the_sft_output(sft_run) -> None:
    cfg_path, run = sft_run
    sft_acc = json.loads((run / "summary.json").read_text())["eval/accuracy_end"]
    proc = _cli("train", str(cfg_path), "name=rev-rl", f"model.path={run / 'final'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run.parent / "rev-rl" / "summary.json").read_text())
    print(f"\nrl from sft: accuracy {summary['eval/accuracy_start']:.2f} -> {summary['eval/accuracy_end']:.2f}")
    # vLLM's greedy eval of the SFT output agrees with the SFT run's own (ties aside)
    assert abs(summary["eval/accuracy_start"] - sft_acc) <= 0.06
    assert summary["steps"] == 2 and summary["samples/lost"] == 0


def test_bad_input_exits_2_with_one_line_before_ray(tmp_path: Path) -> None:
    rng = random.Random(1)
    _write_rows(tmp_path / "train.jsonl", 20, rng)
    _write_rows(tmp_path / "eval.jsonl", 5, rng)
    cfg = _config(tmp_path)
    with (tmp_path / "train.jsonl").open("a") as f:  # row 21 has a prompt but no response
        f.write(json.dumps({"prompt": "123>", "answer": "321"}) + "\n")
    proc = _cli("sft", str(cfg))
    assert proc.returncode == 2, proc.stderr[-2000:]
    # (the random-init model is built first: the rows are checked for responses once tokenized,
    # so transformers' "Writing model shards" bar may precede the error line)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip("\n").endswith(errors[0]) and "Traceback" not in proc.stderr
    assert "train.jsonl: row 21: no response for SFT" in errors[0]
    assert not (tmp_path / "runs" / "rev").exists()  # stopped before the run dir (and Ray)
    (tmp_path / "addition.yaml").write_text(f"name: rev\nrun_root: {tmp_path / 'runs'}\n")  # not a dataset task
    proc = _cli("sft", str(tmp_path / "addition.yaml"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "task.name: dataset" in proc.stderr
