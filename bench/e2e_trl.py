"""e2e_trl: rl_service (GRPO group advantages) vs TRL's GRPOTrainer, same budget, on CPU.

Four sides per round, in turn: rl_service (`rl-service train`, quickstart layout: 2 vLLM
rollout workers, 1 scorer, 2 FSDP2 learners, max_policy_lag 1) with its defaults and "lean"
(no learner-side logprob check, no reference pass: TRL's work per step), TRL with HF generate
(`use_vllm=False`), TRL with colocated vLLM (bench/trl_vllm_shim.py routes its weight sync
through the worker's reload_weights). All four: the same warm-started model, task
(2-digit addition, exact-match reward), prompts in the same order, group size, completion
cap, learning rate (constant AdamW, clip 1.0, no KL), one optimizer step per step, the
same number of steps. Figures: trained completion tokens/s over the training loop (and
steady state, first step excluded), median wall time per step, held-out greedy exact
match after the same number of samples. Also the step-time bar: rl_service's step vs
(standalone vLLM time for the step's generation + learner train time).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from bench import profile
from bench.common import REPO, alternate, env_sized, log, median, medians, pair_ratios, table, target
from bench.rls_run import RUN_ROOT, timing_summary, train_run

FULL = dict(size="30m", prompts=16, group=8, max_tokens=256, lr=5e-5, steps=20, rounds=2)
QUICK = dict(size="test", prompts=4, group=4, max_tokens=16, lr=5e-5, steps=2, rounds=1)


# TRL with beta 0 and num_iterations 1 runs one forward + backward per step: no reference
# model, no old-policy pass (its ratio is against the detached current logprobs). The lean
# side does the same work: no learner-side logprob check, no reference (KL not measured).
LEAN = ["learner.logprob_check_every=0", "learner.kl.measure_every=0"]


def rls_side(model: str, s: dict, i: int, extra: tuple[str, ...] = (), tag: str = "") -> dict:
    run = train_run(
        f"e2e-rls{tag}-{i}",
        [
            f"model.path={model}",
            "seed=0",
            f"train.steps={s['steps']}",
            f"train.prompts_per_step={s['prompts']}",
            "train.eval_every=0",
            f"rollout.samples_per_prompt={s['group']}",
            f"rollout.max_new_tokens={s['max_tokens']}",
            f"rollout.prompts_per_batch={s['prompts'] // 2}",
            "rollout.kv_cache_gib=1.0",
            "learner.advantage=grpo",
            f"learner.lr={s['lr']}",
            "learner.num_minibatches=1",
            "learner.ppo_epochs=1",
            "learner.kl.coef=0.0",
            *extra,
        ],
    )
    t = timing_summary(run["rows"])
    return {
        "tokens_per_s": t["tokens_per_s"],
        "steady_tokens_per_s": t["steady_tokens_per_s"],
        "step_s": t["step_s"],
        "train_s": t["train_s"],
        "generate_s": t["generate_s"],
        "train_compute_s": t["train_compute_s"],
        "publish_s": t["publish_s"],
        "load_s": t["load_s"],
        "wait_s": t["wait_s"],
        "weight_sync_s": t["weight_sync_s"],
        "accuracy_end": run["summary"]["eval/accuracy_end"],
        "accuracy_start": run["summary"]["eval/accuracy_start"],
        "process_s": run["process_s"],
        "completion_tokens": t["completion_tokens"],
        "steps": t["steps"],
        "profile": run["profile"],
    }


def trl_side(mode: str, model: str, s: dict, i: int) -> dict:
    out = RUN_ROOT / f"e2e-trl-{mode}-{i}.json"
    log_path = RUN_ROOT / f"e2e-trl-{mode}-{i}.log"
    prof = RUN_ROOT / f"e2e-trl-{mode}-{i}.collapsed"
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "bench.trl_grpo",
        "--model",
        model,
        "--mode",
        mode,
        "--steps",
        str(s["steps"]),
        "--prompts",
        str(s["prompts"]),
        "--group",
        str(s["group"]),
        "--max-tokens",
        str(s["max_tokens"]),
        "--lr",
        str(s["lr"]),
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    with log_path.open("w") as fh:
        proc = subprocess.run(
            profile.wrap(cmd, prof), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ}, timeout=3600
        )
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"TRL {mode} run failed ({proc.returncode}); log {log_path}")
    r = json.loads(out.read_text())
    steps, tokens = r["step_s"], r["tokens"]
    rest = slice(1, None) if len(steps) > 1 else slice(None)
    return {
        "tokens_per_s": sum(tokens) / sum(steps),
        "steady_tokens_per_s": sum(tokens[rest]) / sum(steps[rest]),
        "step_s": statistics.median(steps[rest]),
        "accuracy_end": r["accuracy_end"],
        "process_s": process_s,
        "startup_s": r["startup_s"],
        "completion_tokens": sum(tokens),
        "steps": len(steps),
        "weight_sync_s": median(r["sync_s"][1:] or r["sync_s"]) if r["sync_s"] else None,
        "logp_diff_mean": r.get("logp_diff_mean"),
        "profile": profile.stage_shares(prof) if profile.enabled() else None,
    }


def standalone_vllm(model: str, s: dict, calls: int = 3) -> dict:
    """Seconds one in-process vLLM engine (all cores) takes for one step's generation:
    the step's prompts x group, same cap and temperature. Median of `calls` after a warm-up."""
    from rl_service.config import AdditionConfig
    from rl_service.rollout.vllm_engine import VLLMEngine
    from rl_service.tasks.addition import AdditionTask
    from rl_service.tasks.stream import PromptStream

    prompts = [p.text for p in PromptStream(AdditionTask(AdditionConfig()), 0).next_batch(s["prompts"])]
    engine = VLLMEngine(model, dtype="float32", kv_cache_gib=1.0, seed=0, cpu_threads=os.cpu_count() or 1)
    engine.generate(prompts, n=s["group"], max_new_tokens=s["max_tokens"], seed=999)
    secs = []
    for i in range(calls):
        t0 = time.perf_counter()
        engine.generate(prompts, n=s["group"], max_new_tokens=s["max_tokens"], seed=i)
        secs.append(time.perf_counter() - t0)
    return {"generate_s": statistics.median(secs), "calls": secs}


def run(quick: bool) -> dict:
    from bench.models import num_params, warm_model

    s = QUICK if quick else env_sized(FULL)
    model_dir = warm_model(s["size"])
    model, params = str(model_dir), num_params(model_dir)
    log(f"e2e_trl: model {model} ({params / 1e6:.2f}M params), {s}")
    runs = alternate(
        s["rounds"],
        {
            "rl_service": lambda i: rls_side(model, s, i),
            "rl_service_lean": lambda i: rls_side(model, s, i, tuple(LEAN), "-lean"),
            "trl_hf": lambda i: trl_side("hf", model, s, i),
            "trl_vllm": lambda i: trl_side("vllm", model, s, i),
        },
    )
    keys = [
        "tokens_per_s",
        "steady_tokens_per_s",
        "step_s",
        "accuracy_end",
        "process_s",
        "train_s",
        "generate_s",
        "weight_sync_s",
        "train_compute_s",
        "publish_s",
        "load_s",
        "wait_s",
    ]
    med = medians(runs, keys)
    ratios = {
        f"{rls}_over_{trl}": pair_ratios(runs, "tokens_per_s", rls, trl)
        for rls in ("rl_service", "rl_service_lean")
        for trl in ("trl_hf", "trl_vllm")
    }
    # The targets are judged on the lean side: the same work per step as TRL's.
    ratio_hf, ratio_vllm = ratios["rl_service_lean_over_trl_hf"], ratios["rl_service_lean_over_trl_vllm"]
    alone = standalone_vllm(model, s)
    # the learner's own compute (timing_s/train_compute) when logged; the driver's train time adds dispatch
    lean = med["rl_service_lean"]
    learner_s = lean.get("train_compute_s") or lean["train_s"]
    ideal = alone["generate_s"] + learner_s
    step_over_ideal = lean["step_s"] / ideal
    acc = {k: med[k]["accuracy_end"] for k in med}
    return {
        "settings": {
            **s,
            "model": model,
            "params": params,
            "samples_trained": s["steps"] * s["prompts"] * s["group"],
            "rl_service": "quickstart layout (2 vLLM workers x 0.5 CPU, 1 scorer, 2 FSDP2 learners x 0.5 CPU), "
            "advantage grpo, max_policy_lag 1, fp32 engines",
            "trl": "GRPOTrainer 1.16, use_cpu, loss dapo, scale_rewards group, beta 0, fp32 trainer; "
            "colocated vLLM runs in bf16 (TRL passes no dtype; vLLM's CPU auto)",
        },
        "runs": runs,
        "medians": med,
        "pair_ratios": ratios,
        "median_ratios": {k: median(v) for k, v in ratios.items()},
        "step_bar": {
            "standalone_vllm_generate_s": alone["generate_s"],
            "standalone_calls_s": alone["calls"],
            "learner_train_s": learner_s,
            "driver_train_s": lean["train_s"],
            "ideal_step_s": ideal,
            "rl_service_step_s": lean["step_s"],
            "step_over_ideal": step_over_ideal,
        },
        "targets": {
            "tokens_per_s_vs_trl_hf": target(median(ratio_hf), 2.0),
            "tokens_per_s_vs_trl_vllm": target(median(ratio_vllm), 1.5),
            "accuracy_vs_trl_hf": target(acc["rl_service_lean"] - acc["trl_hf"], 0.0),
            "accuracy_vs_trl_vllm": target(acc["rl_service_lean"] - acc["trl_vllm"], 0.0),
            "step_over_ideal": target(step_over_ideal, 1.25, higher_is_better=False),
        },
    }


def markdown(result: dict) -> str:
    s, med = result["settings"], result["medians"]
    rows = [
        [side, m["tokens_per_s"], m["steady_tokens_per_s"], m["step_s"], m["accuracy_end"], m["process_s"]]
        for side, m in med.items()
    ]
    r = result["median_ratios"]
    b = result["step_bar"]
    return (
        f"{s['params'] / 1e6:.1f}M-param warm-started model, {s['prompts']} prompts x {s['group']} completions "
        f"per step, cap {s['max_tokens']} tokens, lr {s['lr']}, {s['steps']} steps "
        f"({s['samples_trained']} samples), {s['rounds']} rounds (rl_service, rl_service lean, TRL HF, TRL vLLM in "
        f"turn; lean = {' '.join(LEAN)}: TRL's work per step, no reference or old-policy pass)\n\n"
        + table(
            ["side", "trained tok/s", "steady tok/s", "s/step (median)", "held-out acc after", "process wall s"], rows
        )
        + f"\n\nrl_service lean / TRL tokens/s (median of per-round ratios): vs HF generate "
        f"{_f(r['rl_service_lean_over_trl_hf'])} (target >= 2), vs colocated vLLM "
        f"{_f(r['rl_service_lean_over_trl_vllm'])} (target >= 1.5); defaults: {_f(r['rl_service_over_trl_hf'])}"
        f" and {_f(r['rl_service_over_trl_vllm'])}.  \n"
        f"Step bar (lean): rl_service step {b['rl_service_step_s']:.2f} s"
        f" vs standalone vLLM {b['standalone_vllm_generate_s']:.2f} s"
        f" + learner compute {b['learner_train_s']:.2f} s = {b['ideal_step_s']:.2f} s"
        f" -> {b['step_over_ideal']:.2f}x (target <= 1.25)"
        + _rls_split(med["rl_service_lean"], "lean")
        + _rls_split(med["rl_service"], "defaults")
    )


def _rls_split(m: dict, label: str) -> str:
    """Where an rl_service step goes (steady-state medians of its own timers)."""
    keys = ["wait_s", "generate_s", "train_s", "train_compute_s", "weight_sync_s", "publish_s", "load_s"]
    return f"  \nrl_service ({label}) step split (medians, s): " + ", ".join(
        f"{k.removesuffix('_s')} {m[k]:.2f}" for k in keys if m.get(k) is not None
    )


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"
