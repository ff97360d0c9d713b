"""PPO with a learned reward model (`reward.model`) on the tiny model.

A reward model is trained for a few steps with train-rm; the RewardScorer built from
`RewardConfig(model=DIR)` must give each real rollout sample exactly the score a direct,
unbatched forward of that reward model gives `prompt + completion`; a 2-step PPO run
through the CLI then trains on those scores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from rl_service.config import AdditionConfig, PreferenceRunConfig, RewardConfig, RMTrainConfig, RolloutConfig
from rl_service.preference.data import load_pairs
from rl_service.preference.train import train_preferences
from rl_service.reward.scorer import RewardScorer
from rl_service.rollout.worker import RolloutWorker
from rl_service.types import Prompt, PromptBatch
from tests.integration.conftest import tiny_model_config, train_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    cfg = PreferenceRunConfig(
        task=AdditionConfig(num_eval=50),
        model=tiny_model_config(),
        preference=RMTrainConfig(num_train_pairs=200, batch_size=16, steps=20, lr=1e-3, warmup_steps=2, eval_every=20),
    )
    train, held_out = load_pairs(cfg)
    out = tmp_path_factory.mktemp("rm")
    train_preferences("rm", cfg, str(tiny_model_dir), train, held_out, out)
    return out / "model"


def test_scorer_rewards_are_the_reward_models_scores(tiny_model_dir: Path, rm_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    worker = RolloutWorker(
        RolloutConfig(engine="hf", samples_per_prompt=4, max_new_tokens=4, num_workers=1),
        str(tiny_model_dir),
        seed=0,
        name="rollout-0",
    )
    prompts = tuple(
        Prompt(i, f"{a}+{b}=", {"answer": str(a + b)}) for i, (a, b) in enumerate([(3, 4), (27, 58), (9, 91)])
    )
    batch = worker.generate(PromptBatch(0, prompts))
    assert len({s.response_text for s in batch.samples}) > 1, "need different completions to compare"
    scored = RewardScorer(RewardConfig(model=str(rm_dir))).score(batch)
    assert [s.sample_id for s in scored.samples] == [s.sample_id for s in batch.samples] and not scored.dropped

    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    with torch.no_grad():  # one text at a time: no padding at all
        direct = [
            float(rm(**tok(s.prompt_text + s.response_text, return_tensors="pt")).logits[0, 0]) for s in batch.samples
        ]
    assert max(abs(a - b) for a, b in zip(scored.rewards, direct)) < 1e-5
    assert len(set(round(r, 6) for r in scored.rewards)) > 1  # real-valued scores, not a 0/1 verifier


@pytest.mark.slow
def test_ppo_two_steps_with_reward_model(tiny_model_dir: Path, rm_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        train_command(
            f"run_root={tmp_path}",
            "train.steps=2",
            f"model.path={tiny_model_dir}",
            f"reward.model={rm_dir}",
            "rollout.engine=hf",
            "rollout.num_workers=1",
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ci-tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    n = 16 * 4  # prompts_per_step x samples_per_prompt in configs/ci/tiny.yaml
    for r in rows:
        assert r["samples/trained"] > 0 and r["reward/std"] > 0
        # A 0/1 verifier's batch mean is a multiple of 1/n; the reward model's is not.
        assert abs(r["reward/mean"] * n - round(r["reward/mean"] * n)) > 1e-4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples/lost"] == 0 and 0.0 <= summary["eval/accuracy_end"] <= 1.0
    assert (run / "config.yaml").read_text().count(str(rm_dir)) == 1

    with pytest.raises(subprocess.CalledProcessError) as err:  # exclusive with a custom function: one line, exit 2
        subprocess.run(
            train_command(
                f"reward.model={rm_dir}",
                "reward.fn=zero",
            ),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=True,
        )
    assert err.value.returncode == 2 and "mutually exclusive" in err.value.stderr


def test_teacher_token_rewards(tiny_model_dir: Path) -> None:
    """Distillation reward = teacher logprob - student (engine) logprob per generated token.
    With the student itself as the teacher it is ~0 everywhere; the teacher's logprobs equal an
    unpadded per-sample forward."""
    from transformers import AutoModelForCausalLM

    from rl_service.reward.learned import TeacherLM

    worker = RolloutWorker(
        RolloutConfig(engine="hf", samples_per_prompt=3, max_new_tokens=4, num_workers=1),
        str(tiny_model_dir),
        seed=0,
        name="rollout-0",
    )
    batch = worker.generate(
        PromptBatch(0, (Prompt(0, "5+17=", {"answer": "22"}), Prompt(1, "60+6=", {"answer": "66"})))
    )
    scored = RewardScorer(RewardConfig(fn="zero", teacher=str(tiny_model_dir), teacher_coef=2.0)).score(batch)
    assert scored.rewards == (0.0,) * len(batch.samples)
    assert [len(r) for r in scored.token_rewards] == [len(s.response_ids) for s in batch.samples]
    assert max(abs(x) for r in scored.token_rewards for x in r) < 1e-4

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    teacher = TeacherLM(str(tiny_model_dir))
    got = teacher.token_logprobs([s.prompt_ids for s in batch.samples], [s.response_ids for s in batch.samples])
    for s, lp in zip(batch.samples, got):
        ids = torch.tensor([list(s.prompt_ids) + list(s.response_ids)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        want = [float(logp[len(s.prompt_ids) - 1 + j, t]) for j, t in enumerate(s.response_ids)]
        assert max(abs(a - b) for a, b in zip(lp, want)) < 1e-5
