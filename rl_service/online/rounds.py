"""One round of the online loop as files and child processes: what it reads, what it runs.

    round_dir/
        pairs_train.jsonl  pairs_held.jsonl     every preference pair so far, split by prompt hash
        rm.yaml   rm/       `rl-service train-rm rm.yaml --data .. --eval-data ..` (warm start)
        prompts.jsonl  canary.jsonl             users' prompts (+ task prompts) / held-out ones
        ppo.yaml  ppo/      `rl-service train ppo.yaml` attached to the service's Ray
        *.log               each child's output

Each child is a whole command of the CLI, so a round is exactly what a user could rerun by hand
from its directory; its failure (exit != 0, a timeout) fails the round, never the service. A
child dies with the service (PR_SET_PDEATHSIG): a SIGKILLed service leaves no orphan training.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rl_service.config.online import OnlineRunConfig
from rl_service.infra.child_process import die_with_parent, last_error
from rl_service.preference.data import split_by_prompt, write_jsonl


class RoundFailed(RuntimeError):
    """A child of the round exited non-zero or ran past online.round_timeout_s."""


class RoundInterrupted(RuntimeError):
    """The service is stopping: the round's child was stopped; the round is redone at the next start."""


def split_prompts(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) by the same prompt hash as the pairs' split, so a
    held-out (canary) prompt is never in the reward model's training pairs either."""
    train, held = split_by_prompt([{"prompt": p} for p in prompts], fraction, seed)
    return [r["prompt"] for r in train], [r["prompt"] for r in held]


def write_pairs(round_dir: Path, pairs: list[dict], cfg: OnlineRunConfig) -> tuple[int, int]:
    train, held = split_by_prompt(pairs, cfg.preference.eval_fraction, cfg.seed)
    write_jsonl(train, round_dir / "pairs_train.jsonl")
    write_jsonl(held, round_dir / "pairs_held.jsonl")
    return len(train), len(held)


def write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def task_prompts(cfg: OnlineRunConfig, model_path: str, count: int) -> list[str]:
    """`count` prompts of the configured task's training split (seeded), as text."""
    if count == 0:
        return []
    from rl_service.tasks import bind_task, make_task

    task = make_task(cfg.task)
    bind_task(task, model_path, cfg.rollout.max_new_tokens)
    items = task.train_items
    rng = random.Random(cfg.seed)
    if items is None:
        return [task.make_prompt(task.sample_train(rng), i).text for i in range(count)]
    picked = rng.sample(list(items), min(count, len(items)))
    return [task.make_prompt(item, i).text for i, item in enumerate(picked)]


def rm_config(cfg: OnlineRunConfig, warm_start: str | None) -> dict:
    """The refit's train-rm YAML: from the adopted reward model when there is one, else from
    online.rm_model (or the policy's model)."""
    if warm_start is not None:
        model = {"path": warm_start}
    else:
        model = (cfg.online.rm_model or cfg.model).model_dump(mode="json")
        model["lora"] = {"r": 0}  # a reward model trains all its weights
    pref = cfg.preference.model_dump(mode="json")
    if warm_start is not None:
        pref["rm_extra_layers"] = 0  # the adopted model has them already
    data = {"name": "rm", "seed": cfg.seed, "model": model, "preference": pref}
    if cfg.task.name == "addition":  # what builds the tiny model when rm_model gives no path
        data["task"] = cfg.task.model_dump(mode="json")
    return data


def ppo_config(cfg: OnlineRunConfig, policy_dir: str, rm_dir: str, prompts: Path, canary: Path, n_canary: int) -> dict:
    """The round's `rl-service train` YAML: the service's training sections, started from the
    served version (the learner's reference, so learner.kl is the leash to it), rewarded by the
    adopted reward model on the users' prompts."""
    data = cfg.model_dump(mode="json", exclude={"online", "preference", "name", "run_root"})
    data["name"] = "ppo"
    data["model"] = {**data["model"], "path": policy_dir}
    data["task"] = {"name": "dataset", "train": str(prompts), "eval": str(canary), "num_eval": n_canary}
    data["reward"] = {**data["reward"], "model": rm_dir, "fns": None}
    data["reward"].pop("fn", None)
    data["train"] = {**data["train"], "steps": cfg.online.ppo_steps, "eval_every": 0, "checkpoint_every": 0}
    data["eval"] = {**data["eval"], "metrics": []}
    kl = data["learner"]["kl"]
    kl["measure_every"] = max(1, kl.get("measure_every", 1))  # the KL guard reads kl/mean every step
    data["serve"] = {**data["serve"], "enabled": False}
    data["tracking"] = {**data["tracking"], "wandb": False}
    data["ray"] = {"address": None, "num_cpus": None}  # the child attaches through $RAY_ADDRESS
    return data


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(
    args: list[str], log: Path, timeout_s: float, env: dict[str, str] | None = None, while_waiting=None
) -> None:
    """`python -m rl_service.cli ARGS`, output to `log`; RoundFailed on exit != 0 or timeout.
    `while_waiting()` is called every half second meanwhile (the service's operator requests);
    if it raises (RoundInterrupted: the service stops), the child is killed first."""
    cmd = [sys.executable, "-m", "rl_service.cli", *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RoundFailed(f"`rl-service {args[0]}` ran past online.round_timeout_s={timeout_s:.0f} (log: {log})")
        time.sleep(0.5)
        if while_waiting is not None:
            try:
                while_waiting()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
    if proc.returncode != 0:
        raise RoundFailed(f"`rl-service {args[0]}` exited {proc.returncode}: {last_error(log)} (log: {log})")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def make_room(target: Path) -> None:
    """Make room for `target` (its parent made; an older copy, e.g. of a cut attempt, removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
