"""What the controller measures on the rollout workers' current policy.

    evaluate(workers, task, cfg)          held-out metrics, the eval set split across workers
    prepare_text_eval(cfg, task, path)    eval.metrics' references and texts, read and checked
    probe_sequences(model_path, task)     fixed token sequences every weight sync is verified on

Both are task-shaped. `eval/accuracy` keeps one meaning on every task, the share of held-out
prompts the greedy policy solves: an environment task's episodes solved; the addition task's exact
matches; a dataset task's completions whose reward (the run's reward function) is at least
`task.success_threshold`, with `eval/reward_mean` beside it and `eval/pass@k` when
`task.eval_samples` k > 1 (k completions sampled at rollout.temperature, solved if any one is).
`eval.metrics` add `eval/rouge_l` and `eval/bleu` of the same greedy completions, and
`eval/perplexity` from the engines' logprobs of fixed texts (tasks/text_metrics.py).
"""

from __future__ import annotations

import math

import ray

from rl_service.config import Config
from rl_service.reward.combined import build_reward
from rl_service.reward.functions import InvalidReward
from rl_service.tasks.dataset import DatasetTask
from rl_service.tasks.text_metrics import TextEval, perplexity
from rl_service.types import Prompt


def evaluate(workers: list, task, cfg: Config, text_eval: TextEval | None = None) -> dict[str, float]:
    """Held-out metrics of the policy the workers hold now (`eval/accuracy` always, and those of
    `text_eval`)."""
    out = _task_metrics(workers, task, cfg, text_eval)
    if text_eval is not None and text_eval.perplexity_sequences is not None:
        out["eval/perplexity"] = _perplexity(workers, text_eval.perplexity_sequences)
    return out


def prepare_text_eval(cfg: Config, task, model_path: str) -> TextEval | None:
    """What `eval.metrics` need (None without any), tokenized with the policy's tokenizer;
    DataError (one line) when a reference or the perplexity file is missing or malformed."""
    if not cfg.eval.metrics:
        return None
    from transformers import AutoTokenizer

    from rl_service.models.hf_config import context_length

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return TextEval.prepare(cfg.eval, task, tokenizer, context_length(model_path))


def _task_metrics(workers: list, task, cfg: Config, text_eval: TextEval | None) -> dict[str, float]:
    max_new_tokens = cfg.rollout.max_new_tokens
    if getattr(task, "is_env", False):
        metas = [p.metadata for p in task.eval_prompts]
        chunks = _split(metas, len(workers))
        results = ray.get([w.evaluate_episodes.remote(c, max_new_tokens) for w, c in zip(workers, chunks)])
        return {"eval/accuracy": sum(r["env_success"] for rs in results for r in rs) / len(metas)}
    if isinstance(task, DatasetTask):
        return evaluate_dataset(workers, task, cfg, text_eval)
    problems = task.eval_problems
    chunks = _split(problems, len(workers))
    texts = ray.get([w.evaluate.remote([p.prompt for p in c], max_new_tokens) for w, c in zip(workers, chunks)])
    correct = sum(task.verify(t, p.answer) for c, ts in zip(chunks, texts) for p, t in zip(c, ts))
    return {"eval/accuracy": correct / len(problems)}


def evaluate_dataset(workers: list, task: DatasetTask, cfg: Config, text_eval: TextEval | None = None) -> dict:
    """Greedy completions of the eval rows scored by the run's reward (a reward that raises or is
    not a finite number counts as unsolved, and in `eval/invalid`); pass@k from k samples;
    ROUGE-L / BLEU of the greedy completions against the references."""
    score = EvalReward(cfg)
    prompts, k, thr = task.eval_prompts, task.cfg.eval_samples, task.cfg.success_threshold
    greedy = [group[0] for group in _completions(workers, prompts, cfg.rollout.max_new_tokens)]
    rewards = [score(p, text) for p, text in zip(prompts, greedy)]
    valid = [r for r in rewards if r is not None]
    out = {
        "eval/accuracy": sum(r is not None and r >= thr for r in rewards) / len(prompts),
        "eval/reward_mean": sum(valid) / len(valid) if valid else math.nan,
        "eval/invalid": float(len(rewards) - len(valid)),
    }
    if text_eval is not None:
        out.update(text_eval.completion_metrics(greedy))
    if k > 1:
        rc = cfg.rollout
        sampled = _completions(
            workers, prompts, rc.max_new_tokens, n=k, temperature=rc.temperature, top_p=rc.top_p, seed=cfg.seed
        )
        solved = [any((r := score(p, t)) is not None and r >= thr for t in group) for p, group in zip(prompts, sampled)]
        out[f"eval/pass@{k}"] = sum(solved) / len(prompts)
    return out


class EvalReward:
    """The run's reward of one eval completion, or None when the function raises / returns junk."""

    def __init__(self, cfg: Config):
        self.reward = build_reward(cfg.reward)  # reward.fn or the weighted reward.fns, as the scorers

    def __call__(self, prompt: Prompt, completion: str) -> float | None:
        try:
            return self.reward.score(prompt.text, completion, prompt.metadata)[0]
        except InvalidReward:
            return None


def _completions(workers: list, prompts: list[Prompt], max_new_tokens: int, **sampling) -> list[list[str]]:
    """Completion texts per prompt (in order), each worker generating from its share's token ids."""
    shares = _split(list(range(len(prompts))), len(workers))
    refs = [
        w.evaluate_ids.remote([list(prompts[i].token_ids) for i in share], max_new_tokens, **sampling)
        for w, share in zip(workers, shares)
    ]
    out: list[list[str]] = [[] for _ in prompts]
    for share, groups in zip(shares, ray.get(refs)):
        for i, group in zip(share, groups):
            out[i] = group
    return out


def _perplexity(workers: list, sequences) -> float:
    """Corpus perplexity of the policy on `sequences` (ScoredSequence), scored by the engines."""
    shares = _split(list(sequences), len(workers))
    rows = ray.get([w.score.remote([list(s.ids) for s in share]) for w, share in zip(workers, shares)])
    return perplexity([s.take(lp) for share, lps in zip(shares, rows) for s, lp in zip(share, lps)])


def _split(items: list, n: int) -> list[list]:
    """Round-robin shares of `items` for `n` workers."""
    return [items[i::n] for i in range(n)]


PROBE_MAX_TOKENS = 64
"""Probes keep their last 64 tokens. A probe only has to tell the synced weights from any others,
and the fp32 engine's and learner's logprobs drift apart with sequence length (a 232-token
few-shot probe differed by 1.24e-4 > verify_tolerance 1e-4 on correct weights, 2026-12-02);
short probes keep the check tight and its scoring cheap. The tail keeps the part that differs
between probes (the problem, its answer, EOS), not a prefix they may share."""


def probe_sequences(model_path: str, task, count: int = 4) -> list[list[int]]:
    """Fixed token sequences (held-out prompt + answer + EOS, at most PROBE_MAX_TOKENS: the
    tail) for verifying weight syncs."""
    return [seq[-PROBE_MAX_TOKENS:] for seq in _full_probes(model_path, task, count)]


def _full_probes(model_path: str, task, count: int) -> list[list[int]]:
    if isinstance(task, DatasetTask):  # already tokenized with the policy's tokenizer
        return task.probe_sequences(count)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if getattr(task, "is_env", False):  # multi-turn transcripts: env tokens inside the sequence
        return task.probe_sequences(tok, count)
    return [tok(p.prompt + p.answer).input_ids + [tok.eos_token_id] for p in task.eval_problems[:count]]
