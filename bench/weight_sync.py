"""weight_sync: seconds per GiB from the learners to the rollout engines, and its share of a step.

Two measurements per model size:
- `path`: the whole sync inside a real run (`timing_s/weight_sync` in metrics.jsonl: learner
  full-state-dict gather + checksum + probe logprobs, object-store transfer, each worker's
  checksum, `reload_weights`, prefix-cache reset and probe check), quickstart layout with
  the model swapped in; runs of the two sizes alternate.
- `engine`: the engine's own load only: `VLLMEngine.load_weights(state_dict)` in this
  process (worker `reload_weights` + prefix-cache reset), median of a few loads; and one
  checksum pass over the same state dict (`state_dict_checksum`) per algorithm, sha256 vs
  xxh3-128: a sync makes one pass at the learner and one in each loading worker / replica.
GiB = fp32 parameter bytes. Target: weight sync <= 5% of step time.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import alternate, env_sized, log, medians, table, target
from bench.rls_run import timing_summary, train_run

FULL = dict(sizes=["quickstart", "30m"], steps=8, rounds=2, engine_loads=5, overrides=["rollout.max_new_tokens=8"])
QUICK = dict(
    sizes=["test", "quickstart"],
    steps=2,
    rounds=1,
    engine_loads=2,
    overrides=["rollout.max_new_tokens=8", "train.prompts_per_step=16"],
)


def gib_of(path) -> float:
    from bench.models import num_params

    return num_params(path) * 4 / 2**30


def path_side(size: str, s: dict, i: int) -> dict:
    from bench.models import warm_model

    model = warm_model(size)
    use_model = [] if size == "quickstart" else [f"model.path={model}"]  # quickstart: the config's own model
    run = train_run(
        f"weight-sync-{size}-{i}", [*use_model, f"train.steps={s['steps']}", "train.eval_every=0", *s["overrides"]]
    )
    t = timing_summary(run["rows"])
    gib = gib_of(model)
    return {
        "gib": gib,
        "weight_sync_s": t["weight_sync_s"],
        "s_per_gib": t["weight_sync_s"] / gib,
        "publish_s": t["publish_s"],
        "load_s": t["load_s"],
        "train_compute_s": t["train_compute_s"],
        "step_s": t["step_s"],
        "share_of_step": t["weight_sync_s"] / t["step_s"],
        "profile": run["profile"],
    }


def engine_load(size: str, loads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from bench.models import warm_model
    from rl_service.rollout.vllm_engine import VLLMEngine

    model = warm_model(size)
    state = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).state_dict()
    engine = VLLMEngine(str(model), dtype="float32", kv_cache_gib=0.25, seed=0, cpu_threads=1)
    secs = []
    for v in range(1, loads + 1):
        t0 = time.perf_counter()
        engine.load_weights(state, v)
        secs.append(time.perf_counter() - t0)
    gib = gib_of(model)
    med = statistics.median(secs)
    del engine
    return {"gib": gib, "load_s": med, "s_per_gib": med / gib, "loads_s": secs, "checksum_s": checksum_pass(state)}


def checksum_pass(state: dict, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one `state_dict_checksum` pass per available algorithm (alternating)."""
    from rl_service.rollout.weight_sync import HASHERS, state_dict_checksum

    secs: dict[str, list[float]] = {algo: [] for algo in sorted(HASHERS)}
    for _ in range(repeats):
        for algo in secs:
            t0 = time.perf_counter()
            state_dict_checksum(state, algo)
            secs[algo].append(time.perf_counter() - t0)
    return {algo: statistics.median(v) for algo, v in secs.items()}


def run(quick: bool) -> dict:
    s = QUICK if quick else env_sized(FULL)
    a, b = s["sizes"]
    runs = alternate(s["rounds"], {a: lambda i: path_side(a, s, i), b: lambda i: path_side(b, s, i)})
    log("weight_sync: engine-only loads in this process")
    engine = {size: engine_load(size, s["engine_loads"]) for size in s["sizes"]}
    med = medians(
        runs, ["gib", "weight_sync_s", "s_per_gib", "step_s", "share_of_step", "publish_s", "load_s", "train_compute_s"]
    )
    return {
        "settings": {
            "sizes": s["sizes"],
            "steps": s["steps"],
            "rounds": s["rounds"],
            "overrides": s["overrides"],
            "layout": "quickstart: 2 vLLM workers, 2 FSDP2 learners, object-store transfer",
            "cpus": os.cpu_count(),
        },
        "runs": runs,
        "medians": med,
        "engine_only": engine,
        "targets": {
            f"share_of_step_{size}": target(m["share_of_step"], 0.05, higher_is_better=False) for size, m in med.items()
        },
    }


def markdown(result: dict) -> str:
    rows = []
    for size, m in result["medians"].items():
        e = result["engine_only"][size]
        rows.append(
            [
                size,
                f"{m['gib'] * 1024:.1f} MiB",
                m["weight_sync_s"],
                m.get("publish_s"),
                m.get("load_s"),
                m["s_per_gib"],
                e["s_per_gib"],
                *(1000 * e.get("checksum_s", {}).get(a, float("nan")) for a in ("sha256", "xxh3_128")),
                m["step_s"],
                f"{100 * m['share_of_step']:.1f}%",
            ]
        )
    s = result["settings"]
    return (
        f"quickstart layout with the model swapped in, {s['steps']} steps x {s['rounds']} rounds (sizes alternate); "
        "full path = `timing_s/weight_sync` (gather, checksum, probes, transfer, load, verify on 2 workers); "
        "engine only = `VLLMEngine.load_weights` in-process; checksum ms = one `state_dict_checksum` pass "
        "(a sync makes one at the learner, one per loading worker); publish = learner gather/checksum/probe/put "
        "(`timing_s/publish`), load = slowest worker's checksum+load+probe (`timing_s/load`); the rest of the full "
        "path is driver-side Ray dispatch and waits\n\n"
        + table(
            [
                "model",
                "fp32 size",
                "full path s",
                "publish s",
                "load s",
                "full path s/GiB",
                "engine-only s/GiB",
                "checksum ms sha256",
                "checksum ms xxh3",
                "s/step",
                "share of step",
            ],
            rows,
        )
    )
