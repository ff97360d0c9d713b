"""Logged (prompt, completion, reward) rows for ILQL, and their token-level episodes.

    behaviour_rows(cfg, model_dir)   the behaviour policy (the model, sampling) answers task prompts,
                                     scored by `reward:`: what a run's rollouts log
    file_rows(path)                  JSON lines {prompt, completion, reward}
    feedback_rows(db)                the serving feedback store: rated completions, reward = mean rating
    episodes(model, tok, rows)       frozen hidden states and the actions / rewards per response token

A row's episode: the states are the prompt and every prefix of the completion, the actions the
completion's tokens then EOS (when it stopped), the reward the row's at the last action, 0 before.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rl_service.config import ConfigError
from rl_service.config.ilql import ILQLRunConfig


def behaviour_rows(cfg: ILQLRunConfig, model_dir: str) -> list[dict]:
    from rl_service.reward.combined import build_reward
    from rl_service.rollout.hf_engine import HFEngine
    from rl_service.tasks import bind_task, make_task

    ic = cfg.ilql
    task = make_task(cfg.task)
    bind_task(task, model_dir, ic.max_new_tokens)
    rng = random.Random(cfg.seed)
    items = task.train_items
    if items is None:
        prompts = [task.make_prompt(task.sample_train(rng), i) for i in range(ic.behaviour_prompts)]
    else:
        prompts = [task.make_prompt(x, i) for i, x in enumerate(rng.sample(list(items), ic.behaviour_prompts))]
    engine = HFEngine(model_dir, seed=cfg.seed)
    reward = build_reward(cfg.reward)
    rows = []
    for start in range(0, len(prompts), 256):
        chunk = prompts[start : start + 256]
        outs = engine.generate(
            [p.text for p in chunk], ic.behaviour_samples, ic.max_new_tokens, ic.behaviour_temperature
        )
        for p, group in zip(chunk, outs):
            for c in group:
                ids = list(c.token_ids) + ([engine.eos_id] if c.finish_reason == "stop" else [])
                r, _ = reward.score(p.text, c.text, p.metadata)
                rows.append({"prompt": p.text, "completion": c.text, "reward": r, "token_ids": ids})
    return rows


def file_rows(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise ConfigError(f"--data: {path!r} not found")
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)):
            raise ConfigError(f"{path}:{i}: expected string prompt and completion, got keys {sorted(row)}")
        if not isinstance(row.get("reward"), (int, float)) or not math.isfinite(row["reward"]):
            raise ConfigError(f"{path}:{i}: reward must be a finite number (got {row.get('reward')!r})")
        rows.append({"prompt": row["prompt"], "completion": row["completion"], "reward": float(row["reward"])})
    if not rows:
        raise ConfigError(f"--data: {path!r} has no rows")
    return rows


def feedback_rows(db: str) -> list[dict]:
    if not Path(db).is_file():
        raise ConfigError(f"--feedback-db: {db!r} not found")
    from rl_service.serving.feedback import FeedbackStore

    store = FeedbackStore(db)
    try:
        rated = store.rated_completions()
    finally:
        store.close()
    if not rated:
        raise ConfigError(f"--feedback-db: {db!r} has no rated completions")
    return [{"prompt": p, "completion": c, "reward": float(s)} for p, c, s in rated]


@dataclass
class Episodes:
    """Right-padded over response positions: N rows, T positions, H hidden."""

    hidden: torch.Tensor  # [N, T, H] the state at each position (last hidden state, frozen)
    actions: torch.Tensor  # [N, T] the token taken
    rewards: torch.Tensor  # [N, T] the row's reward at its last action, 0 elsewhere
    mask: torch.Tensor  # [N, T] 1 on response positions


@torch.no_grad()
def episodes(model, tokenizer, rows: list[dict], batch: int = 256) -> Episodes:
    """The frozen policy's hidden states for every row's response positions (state t = all tokens
    before action t: the hidden state at index len(prompt) - 1 + t)."""
    eos = tokenizer.eos_token_id
    seqs = []
    for r in rows:
        p = tokenizer(r["prompt"]).input_ids
        a = r.get("token_ids") or tokenizer(r["completion"], add_special_tokens=False).input_ids + [eos]
        seqs.append((p, list(a)))
    T = max(len(a) for _, a in seqs)
    H = model.config.hidden_size
    out = Episodes(
        torch.zeros(len(rows), T, H), torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T),
        torch.zeros(len(rows), T),
    )  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for s in range(0, len(seqs), batch):
        chunk = seqs[s : s + batch]
        L = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), L), pad, dtype=torch.long)
        att = torch.zeros(len(chunk), L, dtype=torch.long)
        for i, (p, a) in enumerate(chunk):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            att[i, : len(p) + len(a)] = 1
        hs = model(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states[-1].float()
        for i, (p, a) in enumerate(chunk):
            n = s + i
            out.hidden[n, : len(a)] = hs[i, len(p) - 1 : len(p) - 1 + len(a)]
            out.actions[n, : len(a)] = torch.tensor(a)
            out.mask[n, : len(a)] = 1
            out.rewards[n, len(a) - 1] = rows[n]["reward"]
    return out
