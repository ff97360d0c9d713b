"""lora: what LoRA saves the learner (model.lora): memory, trainable parameters, bytes per sync.

No Ray, no engines: one `Learner` process (gloo, world 1, 2 threads) on a random-init model,
GAE with a critic and the KL measured against the reference, as the quickstart trains. Sides:
- full: every weight trained; the reference is a second copy of the policy, the critic a third
  (its own backbone), AdamW state for the policy's and the critic's weights;
- lora: rank-8 adapters on every attention / MLP projection (policy and critic), base frozen;
  the reference is the policy with its adapters off.
Figures per side: the process's peak RSS (ru_maxrss) after setup and after `updates` updates,
trainable parameters, the median update time, and what one publish costs: the bytes handed to
the engines and the publish's seconds, for the merged weights (model.lora.sync=merged: the size
of full weights) and for the adapters alone (model.lora.sync=adapters).

Engine side (one vLLM engine, 1 thread, in this process; the published version of the lora
side): loading it (checksum + load + probe, `load_verified`) as merged weights into a plain
engine and as adapters into an engine with LoRA layers, then generating the quickstart's batch
shape (`gen_prompts` x `group` samples of `gen_tokens` tokens, EOS ignored) with each: the LoRA
layers' cost per generated token on CPU, against the bytes they save.
"""

from __future__ import annotations

import resource
import time

from bench.common import alternate, log, median, medians, table

FULL = dict(size="30m", prompts=16, group=8, updates=3, rounds=2, gen_prompts=16, gen_tokens=16, gen_rounds=3)
QUICK = dict(size="test", prompts=4, group=4, updates=2, rounds=1, gen_prompts=4, gen_tokens=8, gen_rounds=1)
PROBES = [[1, 5, 6, 7, 8, 9, 10, 11], [1, 12, 13, 14]]


def _rank(rank: int, job: dict, out) -> None:
    import torch

    from rl_service.learner.learner import Learner

    torch.set_num_threads(2)
    learner = Learner(job["cfg"], job["model"], 0, 1, "127.0.0.1", job["port"], seed=0, lora=job["lora"])
    try:
        info = learner.setup()
        rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times = []
        for _ in range(job["updates"]):
            t0 = time.perf_counter()
            learner.train_step(job["batches"], job["group"])
            times.append(time.perf_counter() - t0)
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any publish
        t0 = time.perf_counter()
        version, sd = learner.publish(1, PROBES)
        result = {
            "num_params": info["num_params"],
            "trainable_params": info["trainable_params"],
            "rss_setup_mb": rss_setup,
            "rss_peak_mb": rss_peak,
            "update_s": median(times[1:] or times),
            "sync_bytes": version.num_bytes,
            "publish_s": time.perf_counter() - t0,
            "adapter_bytes": 0,
            "publish_adapters_s": 0.0,
        }
        if job["lora"] is not None:  # the same weights published as adapters only
            learner.lora = learner.lora.model_copy(update={"sync": "adapters"})
            t0 = time.perf_counter()
            a_version, a_sd = learner.publish(1, PROBES)
            result.update(adapter_bytes=a_version.num_bytes, publish_adapters_s=time.perf_counter() - t0)
            if job.get("save"):
                torch.save({"merged": (version, sd), "adapters": (a_version, a_sd)}, job["save"])
        out.put(result)
    finally:
        learner.shutdown()


def _one(model: str, s: dict, use_lora: bool, save: str | None = None) -> dict:
    import torch.multiprocessing as mp

    from bench.learner_step import _batches
    from rl_service.config import LearnerConfig, LoraConfig
    from rl_service.infra.env import free_port

    cfg = LearnerConfig(
        num_workers=1, backend="gloo", advantage={"type": "gae", "critic_lr": 1e-3}, lr=1e-4, kl={"coef": 0.0}
    )
    job = {
        "cfg": cfg,
        "model": model,
        "lora": LoraConfig(r=8, alpha=16) if use_lora else None,
        "batches": _batches(s["prompts"], s["group"]),
        "group": s["group"],
        "updates": s["updates"],
        "port": free_port(),
        "save": save,
    }
    out = mp.get_context("spawn").Queue()
    ctx = mp.spawn(_rank, nprocs=1, join=False, args=(job, out))
    while not ctx.join():
        pass
    return {"variant": "lora" if use_lora else "full", **out.get(timeout=60)}


def _engines(model: str, s: dict, published: str) -> dict:
    """Load the lora side's version both ways, then time generation with each engine."""
    import torch

    from rl_service.rollout.adapters import max_lora_rank
    from rl_service.rollout.vllm_engine import VLLMEngine
    from rl_service.rollout.weight_sync import load_verified

    pub = torch.load(published, weights_only=False)
    prompts = [[1, *(5 + (7 * i + j) % 50 for j in range(6))] for i in range(s["gen_prompts"])]
    out = {}
    for side, rank in (("merged", 0), ("adapters", max_lora_rank(8))):
        engine = VLLMEngine(model, kv_cache_gib=0.25, seed=0, cpu_threads=1, lora_rank=rank)
        meta, sd = pub[side]
        loaded = load_verified(engine, sd, meta, 1e-4, f"bench {side}")
        times = []
        for r in range(s["gen_rounds"] + 1):  # the first call warms up
            t0 = time.perf_counter()
            groups = engine.generate_ids(prompts, n=s["group"], max_new_tokens=s["gen_tokens"], seed=r)
            times.append(time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for g in groups for c in g)
        out[side] = {
            "load_s": loaded["seconds"],
            "probe_max_diff": loaded["probe_max_diff"],
            "bytes": loaded["bytes"],
            "generate_s": median(times[1:]),
            "tokens": tokens,
        }
        del engine
    return out


def run(quick: bool) -> dict:
    import tempfile

    from bench.models import nonstop_model

    s = QUICK if quick else FULL
    model = str(nonstop_model(s["size"]))
    log(f"lora: model {model}, {s}")
    runs = alternate(s["rounds"], {v: (lambda i, v=v: _one(model, s, v == "lora")) for v in ("full", "lora")})
    keys = [
        "rss_setup_mb",
        "rss_peak_mb",
        "update_s",
        "trainable_params",
        "num_params",
        "sync_bytes",
        "publish_s",
        "adapter_bytes",
        "publish_adapters_s",
    ]
    med = medians(runs, keys)
    with tempfile.TemporaryDirectory() as tmp:
        published = f"{tmp}/published.pt"
        _one(model, {**s, "updates": 1}, True, save=published)
        log("lora: engines (merged weights vs adapters)")
        engines = _engines(model, s, published)
    return {"settings": {**s, "model": model}, "runs": runs, "medians": med, "engines": engines}


def markdown(result: dict) -> str:
    s, med = result["settings"], result["medians"]
    rows = [
        [
            v,
            f"{m['num_params'] / 1e6:.1f}M",
            f"{m['trainable_params'] / 1e6:.3f}M",
            m["rss_setup_mb"],
            m["rss_peak_mb"],
            f"{m['sync_bytes'] / 2**20:.1f}",
            m["publish_s"],
            f"{m['adapter_bytes'] / 2**20:.2f}" if m["adapter_bytes"] else "-",
            m["publish_adapters_s"] if m["adapter_bytes"] else "-",
            m["update_s"],
        ]
        for v, m in med.items()
    ]
    engines = result.get("engines", {})
    engine_rows = [
        [
            side,
            f"{e['bytes'] / 2**20:.2f}",
            e["load_s"],
            f"{e['probe_max_diff']:.1e}",
            e["generate_s"],
            e["tokens"],
            f"{e['tokens'] / e['generate_s']:.0f}",
        ]
        for side, e in engines.items()
    ]
    return (
        f"One GAE learner process (2 threads) on the {s['size']} model (random init), "
        f"{s['prompts']} x {s['group']} samples per update, {s['updates']} updates, {s['rounds']} rounds "
        "(medians); lora = r 8, alpha 16 on every attention / MLP projection of policy and critic\n\n"
        + table(
            [
                "side",
                "params",
                "trainable",
                "RSS after setup MiB",
                "peak RSS MiB",
                "sync MiB (merged)",
                "publish s (merged)",
                "sync MiB (adapters)",
                "publish s (adapters)",
                "update s",
            ],
            rows,
        )
        + (
            f"\n\nOne vLLM engine (1 thread) loading the lora side's version and generating "
            f"{s['gen_prompts']} prompts x {s['group']} samples x {s['gen_tokens']} tokens "
            f"(median of {s['gen_rounds']} after a warm-up):\n\n"
            + table(["sync", "MiB", "load s", "probe diff", "generate s", "tokens", "tokens/s"], engine_rows)
            if engine_rows
            else ""
        )
    )
