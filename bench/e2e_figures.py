"""e2e_trl's figures: per run (steps after the first), per pair of runs, and the shared evaluator.

Three token counts per step, each divided by the step's wall time, so that no saving of work can
pass as a speed-up by itself:
- `tokens_per_s`: completion tokens trained (every sampled completion token in the loss);
- `nonzero_tokens_per_s`: the completion tokens whose loss term has a non-zero gradient (GRPO,
  no KL: those of groups whose rewards are not all equal);
- `all_tokens_per_s`: prompt + completion tokens of every sample, counted once per sample.
rl_service logs them per update (`tokens/trained`, `tokens/nonzero_grad`, `tokens/processed`,
algo/masking.work_token_counts); the TRL side counts them in its reward callback.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

COUNTS = {"tokens_per_s": "tokens", "nonzero_tokens_per_s": "nonzero_tokens", "all_tokens_per_s": "all_tokens"}
RLS_TIMERS = ["generate", "reward", "wait", "train", "train_compute", "weight_sync", "publish", "load"]


def rls_figures(rows: list[dict]) -> dict:
    """Figures of one rl_service run from its metrics.jsonl rows (step 1 left out)."""
    rest = rows[1:] if len(rows) > 1 else rows
    secs = [r["timing_s/step"] for r in rest]
    per_step = {
        "tokens": [r.get("tokens/trained", r["perf/tokens_per_s"] * r["timing_s/step"]) for r in rest],
        "nonzero_tokens": [r.get("tokens/nonzero_grad", float("nan")) for r in rest],
        "all_tokens": [r.get("tokens/processed", float("nan")) for r in rest],
    }
    out = _throughput(secs, per_step)
    for name in RLS_TIMERS:
        xs = [r[f"timing_s/{name}"] for r in rest if _finite(r.get(f"timing_s/{name}"))]
        out[f"{name}_s"] = statistics.median(xs) if xs else None
    out["weight_sync_share"] = statistics.median(r["timing_s/weight_sync"] / r["timing_s/step"] for r in rest)
    skipped = [r.get("train/skipped_zero_adv_tokens", 0.0) for r in rest]
    out["skipped_token_share"] = sum(skipped) / max(sum(per_step["tokens"]), 1.0)
    return out


def trl_figures(result: dict) -> dict:
    """Figures of one TRL run from bench/trl_grpo.py's JSON (step 1 left out)."""
    rest = slice(1, None) if len(result["step_s"]) > 1 else slice(None)
    out = _throughput(result["step_s"][rest], {k: result[k][rest] for k in COUNTS.values()})
    sync = result.get("sync_s") or []
    out["weight_sync_s"] = statistics.median(sync[rest] or sync) if sync else None
    return out


def _throughput(secs: list[float], per_step: dict[str, list[float]]) -> dict:
    total = sum(secs)
    out = {name: sum(per_step[key]) / total for name, key in COUNTS.items()}
    out.update({"step_s": statistics.median(secs), "steps_counted": len(secs), "loop_s": total})
    out["completion_tokens"] = sum(per_step["tokens"])
    return out


def spread(xs: list[float]) -> dict:
    """{min, median, max, n} of per-pair values (None when there are none)."""
    xs = [x for x in xs if _finite(x)]
    if not xs:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def accuracy_summary(values: list[float], problems: int) -> dict:
    """Mean over seeds, the standard error of that mean (seed-to-seed spread), and the binomial
    standard error of one model's accuracy on `problems` problems."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "se": se, "binomial_se": math.sqrt(mean * (1 - mean) / problems), "values": values}


def accuracy_gap(a: dict, b: dict) -> dict:
    """a - b with the standard error of the difference (seed spread of both, else binomial)."""
    sa = a["se"] if a["se"] is not None else a["binomial_se"]
    sb = b["se"] if b["se"] is not None else b["binomial_se"]
    se = math.sqrt(sa**2 + sb**2)
    return {"diff": a["mean"] - b["mean"], "se": se, "diff_over_se": (a["mean"] - b["mean"]) / se if se else None}


def score_dirs(dirs: list[str], num_eval: int) -> list[float]:
    """The shared evaluator: greedy exact match of each HF directory on the short shape's held-out
    problems (AdditionTask with num_eval problems: the split both sides trained without)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.config import AdditionConfig
    from rl_service.models.evaluate import greedy_accuracy_hf
    from rl_service.tasks.addition import AdditionTask

    problems = AdditionTask(AdditionConfig(num_eval=num_eval)).eval_problems
    out = []
    for d in dirs:
        model = AutoModelForCausalLM.from_pretrained(Path(d), dtype=torch.float32)
        out.append(greedy_accuracy_hf(model, AutoTokenizer.from_pretrained(Path(d)), problems))
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
