"""ILQL training (`rl-service train-ilql`): Q and V heads on a frozen policy, then the decoding
they define evaluated against the behaviour policy on the task's held-out prompts.

    rows ──episodes()──▶ frozen hidden states [N, T, H] (computed once: the policy never changes)
      └─ every step: a batch of rows ─▶ heads ─▶ ilql_losses (Q TD to V(s'), expectile V vs target Q,
                                                 CQL) ─▶ Adam on the heads ─▶ Polyak target Q head
    evaluation: HF engine with the ShiftedLMHead (rl_service/ilql/heads.py), beta in ilql.eval_betas:
                sampled (behaviour temperature) and greedy rewards per held-out prompt; beta 0 is the
                behaviour policy, so "ILQL - behaviour" is a paired difference per prompt, with its SE

One process on the CPU (the heads are small, the policy is only read).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path

import torch

from rl_service.algo.ilql import ilql_losses, polyak_update
from rl_service.config.ilql import ILQLRunConfig
from rl_service.ilql.data import Episodes, episodes
from rl_service.ilql.heads import ILQLHeads, ShiftedLMHead, save_heads, set_beta
from rl_service.infra.files import write_atomic

_SKIP = ("build_info.json",)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def held_out_prompts(task) -> list:
    """The task's held-out prompts as Prompts (text + the metadata the reward reads)."""
    if hasattr(task, "eval_problems"):  # addition
        from rl_service.types import Prompt

        return [Prompt(i, p.prompt, {"answer": p.answer}) for i, p in enumerate(task.eval_problems)]
    return list(task.eval_prompts)


def evaluate(engine, reward, prompts, cfg: ILQLRunConfig, beta: float) -> dict:
    """Per held-out prompt: mean reward of `eval_samples` sampled completions, and the greedy one's.
    -> {"sampled": [per prompt], "greedy": [per prompt]} at this beta (fixed seeds: the same draws
    for every beta, so differences are paired)."""
    ic = cfg.ilql
    set_beta(engine.model, beta)
    texts = [p.text for p in prompts]
    sampled = engine.generate(texts, ic.eval_samples, ic.max_new_tokens, ic.behaviour_temperature, seed=cfg.seed + 1)
    greedy = engine.generate(texts, 1, ic.max_new_tokens, 0.0)
    score = lambda p, c: reward.score(p.text, c.text, p.metadata)[0]  # noqa: E731
    return {
        "sampled": [sum(score(p, c) for c in group) / len(group) for p, group in zip(prompts, sampled)],
        "greedy": [score(p, group[0]) for p, group in zip(prompts, greedy)],
    }


def train_ilql(cfg: ILQLRunConfig, model_dir: str, rows: list[dict], out: Path, log=print) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.reward.combined import build_reward
    from rl_service.rollout.hf_engine import HFEngine
    from rl_service.tasks import bind_task, make_task

    ic = cfg.ilql
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(ic.threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ep: Episodes = episodes(policy, tok, rows)
    vocab = policy.get_output_embeddings().weight.shape[0]
    heads = ILQLHeads(policy.config.hidden_size, vocab, ic.head_hidden)
    target_q = copy.deepcopy(heads.q).requires_grad_(False)
    opt = torch.optim.Adam(heads.parameters(), lr=ic.lr)

    task = make_task(cfg.task)
    bind_task(task, model_dir, ic.max_new_tokens)
    held_out = held_out_prompts(task)
    reward = build_reward(cfg.reward)
    engine = HFEngine(model_dir, seed=cfg.seed, device="cpu")  # where the heads train
    engine.model.set_output_embeddings(ShiftedLMHead(engine.model.get_output_embeddings(), heads, ic.beta))

    metrics_path = out / "metrics.jsonl"
    gen = torch.Generator().manual_seed(cfg.seed)
    n = ep.hidden.shape[0]
    log(f"[ilql] {n} logged completions (mean reward {ep.rewards.sum(1).mean():.3f}); {ic.steps} steps")
    with metrics_path.open("w") as fh:
        for step in range(1, ic.steps + 1):
            idx = torch.randint(0, n, (min(ic.batch_size, n),), generator=gen)
            h, a, r, m = ep.hidden[idx], ep.actions[idx], ep.rewards[idx], ep.mask[idx]
            q_all, v = heads(h)  # [B, T, V], [B, T]
            with torch.no_grad():
                target_taken = target_q(h).gather(-1, a.unsqueeze(-1)).squeeze(-1)  # [B, T]
            loss, row = ilql_losses(q_all, target_taken, v, a, r, m, ic.gamma, ic.tau, ic.cql_alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            polyak_update(list(target_q.parameters()), list(heads.q.parameters()), ic.polyak)
            row = {"step": step, "loss/total": float(loss.detach()), **row}
            if step % ic.eval_every == 0 or step == ic.steps:
                with torch.no_grad():
                    ev = evaluate(engine, reward, held_out, cfg, ic.beta)
                row["eval/reward_sampled"] = _mean_se(ev["sampled"])[0]
                row["eval/reward_greedy"] = _mean_se(ev["greedy"])[0]
                log(
                    f"[ilql] step {step}: loss {row['loss/total']:.4f} (q {row['loss/q']:.4f} v {row['loss/v']:.4f} "
                    f"cql {row['loss/cql']:.3f}); held-out reward at beta {ic.beta}: sampled "
                    f"{row['eval/reward_sampled']:.3f}, greedy {row['eval/reward_greedy']:.3f}"
                )
            fh.write(json.dumps(row) + "\n")
    train_s = time.perf_counter() - t0

    heads.eval()
    per_beta = {}
    with torch.no_grad():
        for b in sorted({0.0, *ic.eval_betas, ic.beta}):
            per_beta[b] = evaluate(engine, reward, held_out, cfg, b)
    base = per_beta[0.0]
    table = {}
    for b, ev in per_beta.items():
        entry = {}
        for kind in ("sampled", "greedy"):
            mean, se = _mean_se(ev[kind])
            diff, diff_se = _mean_se([x - y for x, y in zip(ev[kind], base[kind])])
            entry[kind] = {"mean": mean, "se": se, "minus_behaviour": diff, "minus_behaviour_se": diff_se}
        table[str(b)] = entry
        log(
            f"[ilql] beta {b}: sampled reward {entry['sampled']['mean']:.3f} ± {entry['sampled']['se']:.3f} "
            f"({entry['sampled']['minus_behaviour']:+.3f} ± {entry['sampled']['minus_behaviour_se']:.3f} vs "
            f"behaviour), greedy {entry['greedy']['mean']:.3f} ({entry['greedy']['minus_behaviour']:+.3f} ± "
            f"{entry['greedy']['minus_behaviour_se']:.3f})"
        )

    model_out = out / "model"
    if model_out.exists():
        shutil.rmtree(model_out)
    shutil.copytree(model_dir, model_out, ignore=shutil.ignore_patterns(*_SKIP))
    save_heads(model_out, heads, ic.beta, ic.head_hidden)
    summary = {
        "rows": n,
        "data_reward_mean": float(ep.rewards.sum(1).mean()),
        "steps": ic.steps,
        "train_s": train_s,
        "held_out_prompts": len(held_out),
        "beta": ic.beta,
        "by_beta": table,
        "model_dir": str(model_out),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
