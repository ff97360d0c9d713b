"""Serve overhead: the same prompts through the Ray Serve endpoint vs the engine in-process.

    .venv/bin/python -m bench.serve [--model DIR] [--requests 64] [--max-tokens 16] [--repeats 3]

Both sides run the same engine class with the same settings (vLLM in-process, fp32, one
CPU thread, greedy): the in-process side calls `engine.generate([prompt])` one request at
a time in this process; the Serve side sends the same requests over HTTP (keep-alive
httpx client, like the openai client) to a replica holding its own engine, first one at
a time (latency), then `--concurrency` at once (throughput). Runs alternate (in-process,
serve, in-process, ...) so drift on a shared machine hits both. Writes
bench/results/serve.json (machine, versions, command, every run, medians) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import cpu_name
from rl_service.infra.env import free_port

REPO = Path(__file__).resolve().parents[1]


def _env() -> None:
    os.environ.setdefault("TMPDIR", str(REPO / ".tmp" / "bench"))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)


def default_model() -> Path:
    """The small test model (hidden 64, 2 layers), built once into .cache/test-models."""
    from rl_service.config import AdditionConfig, ModelConfig, SFTConfig, TinyModelConfig
    from rl_service.models.build import ensure_model

    cfg = ModelConfig(
        cache_dir=str(REPO / ".cache" / "test-models"),
        build=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
        sft=SFTConfig(max_steps=50),
    )
    return ensure_model(cfg, AdditionConfig(), seed=0, progress=False)


def summarize(latencies_s: list[float], wall_s: float) -> dict:
    """Latencies in ms: p50, p99 (nearest rank), mean; requests/s over the run's wall time."""
    xs = sorted(latencies_s)
    pick = lambda q: xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))] * 1e3  # noqa: E731
    return {
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_ms": 1e3 * sum(xs) / len(xs),
        "requests_per_s": len(xs) / wall_s,
        "n": len(xs),
    }


def run_inprocess(engine, prompts: list[str], max_tokens: int) -> dict:
    lat, t0 = [], time.perf_counter()
    for p in prompts:
        t = time.perf_counter()
        engine.generate([p], n=1, max_new_tokens=max_tokens, temperature=0)
        lat.append(time.perf_counter() - t)
    return summarize(lat, time.perf_counter() - t0)


def run_serve(url: str, prompts: list[str], max_tokens: int, concurrency: int) -> dict:
    import httpx

    clients = [httpx.Client(timeout=120) for _ in range(concurrency)]

    def one(i: int) -> float:
        t = time.perf_counter()
        r = clients[i % concurrency].post(
            f"{url}/v1/completions",
            json={"model": "policy", "prompt": prompts[i], "max_tokens": max_tokens, "temperature": 0},
        )
        r.raise_for_status()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return summarize(lat, wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: the small test model)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve.json"))
    args = ap.parse_args()
    _env()

    import ray
    import torch
    import vllm
    from ray import serve

    from rl_service.config import ServeConfig
    from rl_service.infra.placement import serve_app
    from rl_service.infra.session import local_ray
    from rl_service.rollout.vllm_engine import VLLMEngine

    model = Path(args.model) if args.model else default_model()
    rng = random.Random(0)
    prompts = [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(args.requests)]

    runs = []
    with local_ray(num_cpus=4, prefix="rls-bench-") as tmp:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(
            port=port,
            engine="vllm",
            threads=1,
            max_tokens=max(64, args.max_tokens),
            max_ongoing_requests=args.concurrency,
            max_queued_requests=4 * args.concurrency,
            feedback_db=str(Path(tmp) / "feedback.sqlite"),
        )
        serve.run(serve_app(cfg, str(model)), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        engine = VLLMEngine(str(model), dtype="float32", kv_cache_gib=0.25, seed=0, cpu_threads=1)
        # Warm both paths (first requests pay one-time costs).
        run_inprocess(engine, prompts[:8], args.max_tokens)
        run_serve(url, prompts[:8], args.max_tokens, 1)
        for rep in range(args.repeats):
            for mode in ("inprocess", "serve_c1", f"serve_c{args.concurrency}"):
                if mode == "inprocess":
                    res = run_inprocess(engine, prompts, args.max_tokens)
                else:
                    res = run_serve(url, prompts, args.max_tokens, int(mode.split("_c")[1]))
                runs.append({"repeat": rep, "mode": mode, **res})
                print(
                    f"  repeat {rep} {mode:>10}: p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  "
                    f"{res['requests_per_s']:.1f} req/s",
                    flush=True,
                )
        serve.shutdown()

    modes = list(dict.fromkeys(r["mode"] for r in runs))
    medians = {
        m: {
            k: statistics.median(r[k] for r in runs if r["mode"] == m)
            for k in ("p50_ms", "p99_ms", "mean_ms", "requests_per_s")
        }
        for m in modes
    }
    overhead = {
        "p50_ms": medians["serve_c1"]["p50_ms"] - medians["inprocess"]["p50_ms"],
        "p99_ms": medians["serve_c1"]["p99_ms"] - medians["inprocess"]["p99_ms"],
    }
    result = {
        "benchmark": "serve",
        "command": " ".join([Path(sys.executable).name, "-m", "bench.serve", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": cpu_name(),
            "note": "shared machine: other jobs ran concurrently",
        },
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "vllm": vllm.__version__,
            "torch": torch.__version__,
        },
        "settings": {
            "model": str(model),
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "concurrency": args.concurrency,
            "engine": "vllm fp32, 1 thread",
            "greedy": True,
        },
        "runs": runs,
        "medians": medians,
        "serve_overhead_c1": overhead,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{'mode':>12} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   (medians of {args.repeats} runs, "
        f"{args.requests} requests x {args.max_tokens} tokens)"
    )
    for m, v in medians.items():
        print(f"{m:>12} {v['p50_ms']:8.1f} {v['p99_ms']:8.1f} {v['requests_per_s']:8.1f}")
    print(f"Serve overhead per request (c=1): p50 +{overhead['p50_ms']:.1f} ms, p99 +{overhead['p99_ms']:.1f} ms")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
