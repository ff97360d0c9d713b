"""What the controller measures on the rollout workers' current policy.

    evaluate(workers, task, max_new_tokens)   held-out accuracy, the eval set split across workers
    probe_sequences(model_path, task)         fixed token sequences every weight sync is verified on

Both are task-shaped: an environment task (multi-turn episodes) is scored by the share of
held-out episodes solved and probed with whole transcripts; a single-turn task by greedy exact
match and probed with prompt + answer + EOS.
"""

from __future__ import annotations

import ray


def evaluate(workers: list, task, max_new_tokens: int) -> float:
    """Greedy exact match on the fixed held-out set, split across the rollout workers.
    Environment tasks: the share of held-out episodes the greedy policy solves."""
    if getattr(task, "is_env", False):
        metas = [p.metadata for p in task.eval_prompts]
        chunks = [metas[i :: len(workers)] for i in range(len(workers))]
        results = ray.get([w.evaluate_episodes.remote(c, max_new_tokens) for w, c in zip(workers, chunks)])
        return sum(r["env_success"] for rs in results for r in rs) / len(metas)
    problems = task.eval_problems
    chunks = [problems[i :: len(workers)] for i in range(len(workers))]
    texts = ray.get([w.evaluate.remote([p.prompt for p in c], max_new_tokens) for w, c in zip(workers, chunks)])
    correct = sum(task.verify(t, p.answer) for c, ts in zip(chunks, texts) for p, t in zip(c, ts))
    return correct / len(problems)


def probe_sequences(model_path: str, task, count: int = 4) -> list[list[int]]:
    """Fixed token sequences (held-out prompt + answer + EOS) for verifying weight syncs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if getattr(task, "is_env", False):  # multi-turn transcripts: env tokens inside the sequence
        return task.probe_sequences(tok, count)
    return [tok(p.prompt + p.answer).input_ids + [tok.eos_token_id] for p in task.eval_problems[:count]]
