"""The three workload shapes of e2e_trl, and the one config both systems read for each.

- short:  2-digit addition on the SFT-warm-started model. Completions are a few tokens (the
          model answers and stops), prompts ~7 tokens: the old benchmark's workload, where the
          learner's tokens are mostly prompts repeated `group` times and generation is a small
          share of a step.
- long:   completions of ~160 tokens on average with a geometric spread (cap 256): a random-init
          model whose logits are nearly flat (std 0.3 over its 259 real tokens, no padded vocab
          rows), so EOS comes at ~1/260 per token, as a long answer would. Generation dominates
          the step, as in real RL post-training.
- shared: a >= 200-token few-shot prefix common to every prompt (`a+b=c;` x 24, then the
          problem; 232 prompt tokens in all) on the long shape's model, cap 64: the prompt is
          ~80% of every sequence. (Not the warm model: SFT'd on ~8-token prompts, it answers
          `1` to every prompt that long — measured 2026-12-02, 32 of 32 samples — so no group
          had a reward spread and nothing was trained.)

Each shape is one YAML file (written to .tmp/bench/configs/, from configs/quickstart.yaml) plus
the run's overrides (`overrides`): rl_service trains on it through its CLI and bench/trl_grpo.py
builds its prompts (rl_service's PromptStream with the run seed, same order) and its reward
(rl_service's `build_reward` of the same section) from the very same file, so both sides see
identical prompts, rewards, caps and group sizes.

Rewards have a spread in the long and shared shapes (share of digits in the completion), so the
learner has non-zero advantages to train on; short keeps the exact-match reward, whose all-wrong
groups are what zero-advantage skipping saves.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import REPO

CONFIGS = REPO / ".tmp" / "bench" / "configs"
DATA = REPO / ".tmp" / "bench" / "data"
REWARDS = REPO / "bench" / "rewards.py"
FEW_SHOT = 24
"""Examples in the shared prefix: `37+48=85;` is 9 tokens each (per-character), 216 in all."""


@dataclass(frozen=True)
class Shape:
    name: str
    model: str
    """"warm" (SFT on addition, bench.models.warm_model) or "long" (bench.models.long_model)."""
    prompts: int
    """Prompts per step."""
    group: int
    """Completions per prompt."""
    max_tokens: int
    """Completion cap."""
    steps: int
    """Optimizer steps (one per step); step 1 is left out of every throughput figure."""
    lr: float = 5e-5
    size: str = "30m"
    """The model shape (bench/models.py): `30m` for the measurement, `test` for --quick."""
    accuracy: bool = False
    """Score both sides' final models on the 1,000 held-out problems (short only: the other
    shapes' rewards are not accuracy)."""


FULL = {
    "short": Shape("short", "warm", prompts=16, group=8, max_tokens=256, steps=16, accuracy=True),
    "long": Shape("long", "long", prompts=4, group=8, max_tokens=256, steps=8),
    "shared": Shape("shared", "long", prompts=8, group=8, max_tokens=64, steps=8),
}
QUICK = {
    "short": Shape("short", "warm", prompts=4, group=4, max_tokens=16, steps=3, accuracy=True, size="test"),
    "long": Shape("long", "long", prompts=2, group=4, max_tokens=48, steps=3, size="test"),
    "shared": Shape("shared", "long", prompts=2, group=4, max_tokens=16, steps=3, size="test"),
}
EVAL_PROBLEMS = 1000


def config_path(shape: Shape) -> Path:
    """Write (and return) the shape's YAML: configs/quickstart.yaml with the shape's task and
    reward. The components, their resources and the queue layout stay the quickstart's."""
    data = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    data["name"] = f"bench-{shape.name}"
    if shape.name == "short":
        data["task"] = {"name": "addition", "digits": 2, "num_eval": EVAL_PROBLEMS}
        data["reward"]["fn"] = "addition_exact"
    elif shape.name == "long":
        data["task"] = {"name": "addition", "digits": 2, "num_eval": 8}  # held-out eval of a random model: kept small
        data["reward"]["fn"] = f"{REWARDS}:digit_share"
    else:
        train, held_out = _shared_prompt_files()
        data["task"] = {"name": "dataset", "train": str(train), "eval": str(held_out), "prompt_key": "prompt"}
        data["reward"]["fn"] = f"{REWARDS}:digit_share"
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / f"{shape.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def overrides(shape: Shape, model: str, seed: int) -> list[str]:
    """What both sides train with: the model, seed, batch, cap, GRPO, one optimizer step per step,
    no KL. (rl_service's lean / default knobs come on top, in bench/e2e_trl.py.)"""
    return [
        f"model.path={model}",
        f"seed={seed}",
        f"train.steps={shape.steps}",
        f"train.prompts_per_step={shape.prompts}",
        "train.eval_every=0",
        f"rollout.samples_per_prompt={shape.group}",
        f"rollout.max_new_tokens={shape.max_tokens}",
        f"rollout.prompts_per_batch={max(shape.prompts // 2, 1)}",
        "rollout.engine.kv_cache_gib=1.0",
        "learner.advantage=grpo",
        f"learner.lr={shape.lr}",
        "learner.num_minibatches=1",
        "learner.ppo_epochs=1",
        "learner.kl.coef=0.0",
    ]


def _shared_prompt_files() -> tuple[Path, Path]:
    """JSONL rows {prompt: <24 worked examples> + "a+b=", answer}: 2,000 training rows and 64
    held-out ones, the prefix the same in every row (examples from a seeded draw)."""
    train, held_out = DATA / "shared-train.jsonl", DATA / "shared-eval.jsonl"
    if train.is_file() and held_out.is_file():
        return train, held_out
    rng = random.Random(0)
    prefix = "".join(
        f"{a}+{b}={a + b};" for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in range(FEW_SHOT))
    )
    pairs = rng.sample(range(10_000), 2064)
    rows = [{"prompt": f"{prefix}{c // 100}+{c % 100}=", "answer": str(c // 100 + c % 100)} for c in pairs]
    DATA.mkdir(parents=True, exist_ok=True)
    for path, part in ((train, rows[:2000]), (held_out, rows[2000:])):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in part))
        tmp.rename(path)
    return train, held_out
