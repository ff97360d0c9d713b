"""A dataset task end to end (real vLLM workers, Ray scorers, 2 FSDP2 learners), and its exact resume.

The data: addition problems written as JSONL by the test, half of them as chat messages rendered
through the model's chat template (a copy of the test model with a template added), half plain
strings; every row carries `id` and `source`, which the user reward function requires.

    A   4 steps, a checkpoint after every step, lag 0 (deterministic), pass@4 on the eval file
    B   --resume A/checkpoints/step-000002 (in the middle of a data epoch: 40 rows, 16 per step)

Checked: no sample dropped (the fields reached every reward call, on the scorers and in eval),
the eval metrics of a dataset task, and B consuming exactly A's prompts (pending token-id prompts
restored from the checkpoint) with equal weights after step 4.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from rl_service.controller import checkpoint
from tests.integration.conftest import REPO, train_command

PLUGIN = f"{Path(__file__).parent / 'dataset_reward.py'}:leading_digits_with_fields"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} [assistant] {% endif %}"
)


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        row = {"answer": str(a + b), "id": i, "source": "written-by-test"}
        if i % 2:
            row["messages"] = [{"role": "user", "content": f"{a}+{b}="}]
        else:
            row["prompt"] = f"{a}+{b}="
        out.append(row)
    return out


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


def _run(tmp: Path, name: str, model: Path, data: Path, *extra: str, resume: str | None = None):
    cmd = train_command(
        f"name={name}",
        f"run_root={tmp / 'runs'}",
        f"model.path={model}",
        f"task.train={data / 'train.jsonl'}",
        f"task.eval={data / 'eval.jsonl'}",
        f"reward.fn={PLUGIN}",
        "reward.on_error=drop",
        "train.steps=4",
        "train.max_policy_lag=0",
        "train.checkpoint_every=1",
        "train.keep_last=4",
        "rollout.num_workers=1",
        "tracking.ray_metrics=false",
        *extra,
        config=REPO / "configs" / "ci" / "dataset.yaml",
    )
    if resume:
        cmd += ["--resume", resume]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_dataset_task_trains_with_row_fields_and_resumes_exactly(tmp_path, chat_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 40, 1), ("eval", 24, 2)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))

    a = _run(tmp_path, "A", chat_model_dir, data, "task.eval_samples=4", *TEXT_METRICS)
    assert "data: 40 train rows, 24 eval rows; dropped as too long: 0 train, 0 eval" in a.stdout
    a_dir = tmp_path / "runs" / "A"
    summary = json.loads((a_dir / "summary.json").read_text())
    assert summary["samples/dropped_invalid"] == 0, "a reward call missed the row's fields"
    assert summary["samples/trained"] == 4 * 16 * 4
    assert summary["eval/invalid_end"] == 0, "an eval reward call missed the row's fields"
    for key in ("eval/accuracy_end", "eval/reward_mean_end", "eval/pass@4_end"):
        assert 0.0 <= summary[key] <= 1.0, key
    rewards = [r["reward/mean"] for r in _jsonl(a_dir / "metrics.jsonl")]
    assert max(rewards) > 0, "the partial-credit reward never paid: the test would prove nothing"
    _check_text_metrics(a_dir, summary, chat_model_dir, data)

    # The step-2 checkpoint holds step 3's prompts, issued as token ids (chat template rows among them).
    ckpt = a_dir / "checkpoints" / "step-000002"
    pending = checkpoint.load_controller_state(ckpt)["pending"]
    assert pending and all(len(p) == 4 for b in pending for p in b["prompts"]), "pending prompts lost their ids"
    b = _run(tmp_path, "B", chat_model_dir, data, "task.eval_samples=4", *TEXT_METRICS, resume=str(ckpt))
    assert f"resuming from {ckpt}" in b.stdout
    b_dir = tmp_path / "runs" / "B"
    assert _jsonl(b_dir / "consumed.jsonl") == _jsonl(a_dir / "consumed.jsonl")[2:]
    w_a = checkpoint.load_policy_weights(a_dir / "checkpoints" / "step-000004")
    w_b = checkpoint.load_policy_weights(b_dir / "checkpoints" / "step-000004")
    w_2 = checkpoint.load_policy_weights(ckpt)
    diff = lambda x, y: max((x[k].float() - y[k].float()).abs().max().item() for k in x)  # noqa: E731
    assert diff(w_a, w_2) > 1e-4, "steps 3-4 changed nothing: the comparison would be vacuous"
    assert diff(w_a, w_b) < 1e-5
    b_summary = json.loads((b_dir / "summary.json").read_text())
    assert b_summary["eval/perplexity_start"] == summary["eval/perplexity_start"], "resume lost the start metrics"


TEXT_METRICS = (
    "eval.metrics=[rouge_l,bleu,perplexity]",
    "task.reference_key=answer",
    "eval.bleu_tokenize=char",
    "eval.bleu_max_order=2",
    "train.eval_every=2",
)


def _check_text_metrics(run_dir: Path, summary: dict, model_dir: Path, data: Path) -> None:
    """eval/<metric> at the step-2 evaluation and at start/end; the start perplexity (the
    untrained model, scored by vLLM) equal to transformers' own loss on the same sequences."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.config import DatasetConfig
    from rl_service.tasks.dataset import DatasetTask
    from rl_service.tasks.text_metrics import reference_sequences

    rows = {r["step"]: r for r in _jsonl(run_dir / "metrics.jsonl")}
    for key, lo, hi in (("eval/rouge_l", 0, 1), ("eval/bleu", 0, 100), ("eval/perplexity", 1, math.inf)):
        for value in (rows[2][key], summary[f"{key}_start"], summary[f"{key}_end"]):
            assert lo <= value <= hi, (key, value)
    tok = AutoTokenizer.from_pretrained(model_dir)
    path = str(data / "eval.jsonl")
    task = DatasetTask(DatasetConfig(train=path, eval=path, reference_key="answer")).bind(tok)
    seqs = reference_sequences([p.token_ids for p in task.eval_prompts], task.eval_references(), tok, 10_000)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll = count = 0.0
    with torch.no_grad():
        for s in seqs:
            labels = torch.tensor([[-100] * s.start + list(s.ids[s.start :])])
            n = len(s.ids) - s.start
            nll, count = nll + model(torch.tensor([list(s.ids)]), labels=labels).loss.item() * n, count + n
    assert summary["eval/perplexity_start"] == pytest.approx(math.exp(nll / count), rel=1e-3)
