"""rollout: vLLM engine vs HF generate through rl_service's own Engine interface.

Both engines live in this process, with the same torch thread count, and are timed on
the same call: `engine.generate(prompts, n=1, max_new_tokens=T, temperature=1.0, seed=i)`.
The models are the `nonstop` flavour (bench/models.py): every completion runs to T
tokens on both engines, so tokens/s compares equal work. Calls alternate vLLM, HF,
vLLM, HF... after one warm-up call each. Full: 64 prompts x 256 tokens on the tiny
(~1.1M) and ~30M models, 3 pairs each. Target: vLLM >= 1.5x HF on the ~30M model.
"""

from __future__ import annotations

import os
import random
import time

from bench.common import alternate, log, median, medians, pair_ratios, table, target


def timed_generate(engine, prompts: list[str], max_new_tokens: int, seed: int) -> dict:
    """One timed Engine.generate call -> {"seconds", "tokens", "tokens_per_s"}."""
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def prompts_for(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(count)]


def run(quick: bool) -> dict:
    import torch

    from bench.models import nonstop_model, num_params
    from rl_service.rollout.hf_engine import HFEngine
    from rl_service.rollout.vllm_engine import VLLMEngine

    sizes = ["test", "tiny"] if quick else ["tiny", "30m"]
    num_prompts, max_tokens, pairs = (8, 32, 1) if quick else (64, 256, 3)
    pairs = int(os.environ.get("BENCH_ROUNDS", pairs))  # time-boxed sessions lower it; recorded in settings
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    runs, per_size = [], {}
    for size in sizes:
        path = nonstop_model(size)
        log(
            f"rollout: {size} model {path.name} ({num_params(path) / 1e6:.2f}M params), "
            f"{num_prompts} prompts x {max_tokens} tokens, {threads} threads"
        )
        vllm = VLLMEngine(str(path), dtype="float32", kv_cache_gib=1.0, seed=0, cpu_threads=threads)
        hf = HFEngine(str(path), dtype="float32", seed=0)
        prompts = prompts_for(num_prompts)
        timed_generate(vllm, prompts, max_tokens, seed=10_000)  # warm-up: first calls pay one-off costs
        timed_generate(hf, prompts, max_tokens, seed=10_000)
        rows = alternate(
            pairs,
            {
                "vllm": lambda i, e=vllm, p=prompts: timed_generate(e, p, max_tokens, seed=i),
                "hf": lambda i, e=hf, p=prompts: timed_generate(e, p, max_tokens, seed=i),
            },
        )
        for r in rows:
            r["model"] = size
        runs += rows
        ratios = pair_ratios(rows, "tokens_per_s", "vllm", "hf")
        per_size[size] = {
            "params": num_params(path),
            "model_path": str(path),
            "engine_start_s": vllm.start_s,
            "medians": medians(rows, ["tokens_per_s", "seconds", "tokens"]),
            "pair_ratios_vllm_over_hf": ratios,
            "median_ratio": median(ratios),
        }
        del vllm, hf
    big = sizes[-1]
    return {
        "settings": {
            "sizes": sizes,
            "prompts": num_prompts,
            "max_new_tokens": max_tokens,
            "n": 1,
            "temperature": 1.0,
            "pairs": pairs,
            "threads": threads,
            "dtype": "float32",
            "vllm": "in-process, enforce_eager, kv 1 GiB",
        },
        "runs": runs,
        "medians": per_size,
        "targets": {f"vllm_over_hf_{big}": target(per_size[big]["median_ratio"], 1.5)},
    }


def markdown(result: dict) -> str:
    rows = []
    for size, m in result["medians"].items():
        med = m["medians"]
        rows.append(
            [
                size,
                f"{m['params'] / 1e6:.2f}M",
                med["vllm"]["tokens_per_s"],
                med["hf"]["tokens_per_s"],
                m["median_ratio"],
                ", ".join(f"{r:.2f}" for r in m["pair_ratios_vllm_over_hf"]),
            ]
        )
    s = result["settings"]
    return (
        f"{s['prompts']} prompts x {s['max_new_tokens']} new tokens, {s['threads']} threads, fp32, "
        f"{s['pairs']} pair(s) (vLLM, HF alternating); generated tokens/s (medians)\n\n"
        + table(["model", "params", "vLLM tok/s", "HF tok/s", "vLLM/HF (median)", "per-pair ratios"], rows)
    )
