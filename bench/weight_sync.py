"""weight_sync: seconds per GiB from the learners to the rollout engines, and its share of a step.

Two measurements per model size:
- `path`: the sync inside a real run, quickstart layout (lag 1) with the model swapped in, once
  per `rollout.weight_sync` mode, all runs alternating. object_store: `timing_s/weight_sync` =
  learner full-state-dict gather + checksum + probe logprobs, object-store transfer, each
  worker's checksum, `reload_weights`, prefix-cache reset and probe check. collective: the
  driver waits only for the learners' stream (per-tensor all-gather + broadcast on the
  weight-sync group, probes) inside `timing_s/weight_sync`, plus `timing_s/weight_settle` (waiting
  before the next train step for the workers' verify + swap, left in flight); the critical
  path figure `critical_s` is their sum, and `share_of_step` uses it.
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

MODES = ["object_store", "collective"]
FULL = dict(sizes=["quickstart", "30m"], steps=8, rounds=2, engine_loads=5, overrides=["rollout.max_new_tokens=8"])
QUICK = dict(
    sizes=["quickstart", "30m"],
    steps=3,  # step 1 (group formation, pipeline fill) is left out of the medians
    rounds=1,
    engine_loads=2,
    overrides=["rollout.max_new_tokens=8", "train.prompts_per_step=16"],
)


def gib_of(path) -> float:
    from bench.models import num_params

    return num_params(path) * 4 / 2**30


def path_side(size: str, mode: str, s: dict, i: int) -> dict:
    from bench.models import warm_model
    from bench.rls_run import steady

    model = warm_model(size)
    use_model = [] if size == "quickstart" else [f"model.path={model}"]  # quickstart: the config's own model
    run = train_run(
        f"weight-sync-{size}-{mode}-{i}",
        [
            *use_model,
            f"rollout.weight_sync={mode}",
            f"train.steps={s['steps']}",
            "train.eval_every=0",
            *s["overrides"],
        ],
    )
    t = timing_summary(run["rows"])
    gib = gib_of(model)
    settle = steady(run["rows"], "timing_s/weight_settle") or 0.0
    critical = t["weight_sync_s"] + settle
    return {
        "gib": gib,
        "weight_sync_s": t["weight_sync_s"],
        "settle_s": settle,
        "critical_s": critical,
        "s_per_gib": critical / gib,
        "publish_s": t["publish_s"],
        "load_s": t["load_s"],
        "train_compute_s": t["train_compute_s"],
        "step_s": t["step_s"],
        "share_of_step": critical / t["step_s"],
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
    sides = {
        f"{size}/{mode}": (lambda i, size=size, mode=mode: path_side(size, mode, s, i))
        for size in s["sizes"]
        for mode in MODES
    }
    runs = alternate(s["rounds"], sides)
    log("weight_sync: engine-only loads in this process")
    engine = {size: engine_load(size, s["engine_loads"]) for size in s["sizes"]}
    med = medians(
        runs,
        [
            "gib",
            "weight_sync_s",
            "settle_s",
            "critical_s",
            "s_per_gib",
            "step_s",
            "share_of_step",
            "publish_s",
            "load_s",
            "train_compute_s",
        ],
    )
    return {
        "settings": {
            "sizes": s["sizes"],
            "steps": s["steps"],
            "rounds": s["rounds"],
            "overrides": s["overrides"],
            "layout": "quickstart: 2 vLLM workers, 2 FSDP2 learners, lag 1; rollout.weight_sync per side",
            "cpus": os.cpu_count(),
        },
        "runs": runs,
        "medians": med,
        "engine_only": engine,
        "targets": {
            f"share_of_step_{side}": target(m["share_of_step"], 0.05, higher_is_better=False) for side, m in med.items()
        },
    }


def markdown(result: dict) -> str:
    rows = []
    for side, m in result["medians"].items():
        e = result["engine_only"][side.split("/")[0]]
        rows.append(
            [
                side,
                f"{m['gib'] * 1024:.1f} MiB",
                m.get("critical_s", m["weight_sync_s"]),
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
        f"quickstart layout with the model swapped in, {s['steps']} steps x {s['rounds']} rounds (sides alternate); "
        "full path = what the driver waits for: `timing_s/weight_sync` (object_store: gather, checksum, probes, "
        "transfer, load, verify on 2 workers; collective: the learners' stream) + `timing_s/weight_settle` "
        "(collective: the workers' swap, settled before the next train step); "
        "engine only = `VLLMEngine.load_weights` in-process; checksum ms = one `state_dict_checksum` pass "
        "(a sync makes one at the learner, one per loading worker); publish = learner gather/checksum/probe/put "
        "(`timing_s/publish`), load = slowest worker's checksum+load+probe (`timing_s/load`); the rest of the full "
        "path is driver-side Ray dispatch and waits\n\n"
        + table(
            [
                "model/mode",
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
