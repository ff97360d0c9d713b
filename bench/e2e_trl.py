"""e2e_trl: rl_service (GRPO) vs TRL's GRPOTrainer on three workload shapes, same budget, on CPU.

Shapes (bench/shapes.py): short (the old benchmark: a few completion tokens per sample), long
(~160-token completions with a spread, cap 256), shared (a 216-token few-shot prefix common to
every prompt). Per shape, in counterbalanced order (A B C D, D C B A, A B C D, ...; round i uses
seed i on every side), each side one whole training run:

- rl_service: `rl-service train` with its defaults (quickstart layout: 2 vLLM workers, 1 scorer,
  2 FSDP2 learners; short shape only);
- rl_service_lean: the lean knobs (LEAN: no learner-side logprob check, no reference pass, i.e.
  TRL's work per step, plus the options that skip work without changing the update), split mode;
- rl_service_lean_colocated: the same in the one-node mode (`placement: colocated`, lag 0);
- trl_hf: TRL with HF generate (`use_vllm=False`);
- trl_vllm: TRL with colocated vLLM, matched to rl_service: fp32 engine, no importance-sampling
  pass (bench/trl_grpo.py --matched).

Both systems: the same model, config file, prompts in the same order, reward, group size, cap,
learning rate (constant AdamW, clip 1.0, no KL), one optimizer step per step, same steps.
Figures per run over steps 2..N (bench/e2e_figures.py): three token rates (completion tokens
trained/s, tokens with a non-zero gradient/s, all tokens/s), median step time, rl_service's
own stage timers. Ratios per round (pair), reported as min / median / max. Short shape: both
sides' final models scored by one evaluator on 1,000 held-out problems, mean over the seeds.
Step bar per shape (bench/standalone.py): lean's step vs the standalone engine time for the
step's generation + the standalone learner time on those samples; overhead = 1 - that / step.

BENCH_SHAPES=short,long picks shapes (the others' results stay from the JSON's last run, each
with its own start time); BENCH_STEPS / BENCH_ROUNDS resize; BENCH_REUSE=<ISO time> reads back
the runs that completed after that time (bench/rls_run.py `reusable`) instead of running them again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import profile
from bench.common import REPO, RESULTS, log, machine_info, medians, pair_ratios, table, target
from bench.e2e_figures import (
    accuracy_gap,
    accuracy_summary,
    rls_figures,
    score_dirs,
    spread,
    trl_figures,
)
from bench.rls_run import RUN_ROOT, recorded_process_s, reusable, train_run
from bench.shapes import EVAL_PROBLEMS, FULL, QUICK, Shape, config_path, overrides

ROUNDS, QUICK_ROUNDS = 3, 1
LEAN = [
    "learner.logprob_check_every=0",
    "learner.kl.measure_every=0",
    "learner.max_tokens_per_microbatch=4096",
    "learner.share_prompt=true",
]
"""TRL with beta 0 and num_iterations 1 runs one forward + backward per step: no reference
model, no old-policy pass. lean does the same, skips zero-advantage samples (the default), and
packs: micro-batches of <= 4096 tokens with no padding, each group's prompt computed once
(`learner.share_prompt`). Skipping and packing leave the update the same up to float rounding
(tests/unit/algo, tests/integration/test_fsdp_learner, test_shared_prompt_learner)."""
COLOCATED = ["placement=colocated", "train.max_policy_lag=0"]
"""One node: engines and learner ranks take turns in the same processes (docs/architecture.md)."""


def rls_sides(shape: Shape) -> dict[str, list[str]]:
    """rl_service's sides of a shape: name -> overrides on top of the shape's. `rl_service_lean`
    is the split mode (the step bar, overhead and weight-sync targets are judged on it);
    `rl_service_lean_colocated` the one-node mode; defaults run on the short shape only."""
    sides = {"rl_service": []} if shape.name == "short" else {}
    sides["rl_service_lean"] = LEAN
    sides["rl_service_lean_colocated"] = LEAN + COLOCATED
    return sides


TRL_SIDES = ["trl_hf", "trl_vllm"]


def rls_side(shape: Shape, model: str, seed: int, side: str, extra: list[str]) -> dict:
    tag = f"e2e-{shape.name}-{side}-{seed}"
    run = train_run(tag, overrides(shape, model, seed) + extra, config=config_path(shape), timeout_s=7200)
    return {
        **rls_figures(run["rows"]),
        "process_s": run["process_s"],
        "final_dir": run["summary"]["final_dir"],
        "profile": run["profile"],
    }


def trl_side(shape: Shape, model: str, seed: int, mode: str) -> dict:
    tag = f"e2e-{shape.name}-trl-{mode}-{seed}"
    out, log_path, prof = (RUN_ROOT / f"{tag}{ext}" for ext in (".json", ".log", ".collapsed"))
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    final = RUN_ROOT / tag / "final"
    if reusable(out) and final.exists():
        log(f"{tag}: reused (BENCH_REUSE)")
        process_s, stage_shares = recorded_process_s(tag), None
    else:
        cmd = [
            *(sys.executable, "-m", "bench.trl_grpo", "--mode", mode, "--config", str(config_path(shape))),
            *("--overrides", json.dumps(overrides(shape, model, seed)), "--save", str(final)),
            *("--out", str(out), *(["--matched"] if mode == "vllm" else [])),
        ]
        t0 = time.perf_counter()
        with log_path.open("w") as fh:
            proc = subprocess.run(profile.wrap(cmd, prof), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=7200)
        process_s = time.perf_counter() - t0
        (RUN_ROOT / f"{tag}.process_s").write_text(f"{process_s}\n")
        if proc.returncode != 0:
            raise RuntimeError(f"TRL {mode} run failed ({proc.returncode}); log {log_path}")
        stage_shares = profile.stage_shares(prof) if profile.enabled() else None
    return {
        **trl_figures(json.loads(out.read_text())),
        "process_s": process_s,
        "final_dir": str(final),
        "profile": stage_shares,
    }


def standalone(shape: Shape, model: str) -> dict:
    """bench/standalone.py for the lean side's config (its own process, nothing else running)."""
    out = RUN_ROOT / f"e2e-{shape.name}-standalone.json"
    if reusable(out):
        log(f"{out.name}: reused (BENCH_REUSE)")
        return json.loads(out.read_text())
    args = json.dumps(overrides(shape, model, 0) + LEAN)
    cmd = [sys.executable, "-m", "bench.standalone", "--config", str(config_path(shape)), "--overrides", args]
    subprocess.run([*cmd, "--out", str(out)], cwd=REPO, check=True, timeout=3600)
    return json.loads(out.read_text())


def run_shape(shape: Shape, rounds: int) -> dict:
    from bench.models import long_model, num_params, warm_model

    model = str(long_model(shape.size) if shape.model == "long" else warm_model(shape.size))
    started, load = time.time(), os.getloadavg()[0]
    call = {
        name: (lambda seed, name=name, extra=extra: rls_side(shape, model, seed, name, extra))
        for name, extra in rls_sides(shape).items()
    }
    call["trl_hf"] = lambda seed: trl_side(shape, model, seed, "hf")
    call["trl_vllm"] = lambda seed: trl_side(shape, model, seed, "vllm")
    sides = list(call)
    log(f"e2e_trl {shape.name}: model {model} ({num_params(Path(model)) / 1e6:.2f}M params), {shape}, {rounds} rounds")
    runs = []
    for i in range(rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:  # A B C D, D C B A, ...
            t0 = time.perf_counter()
            figures = call[side](i)
            runs.append({"pair": i, "side": side, "seed": i, "wall_s": time.perf_counter() - t0, **figures})
            log(f"  {shape.name} round {i} {side}: " + _brief(figures))
    alone = standalone(shape, model)
    return summarise(shape, model, runs, alone, started, load)


def summarise(shape: Shape, model: str, runs: list[dict], alone: dict, started: float, load: float) -> dict:
    sides = list(dict.fromkeys(r["side"] for r in runs))
    numeric = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and k not in ("pair", "seed")}
    med = medians(runs, sorted(numeric))
    ratios = {}
    for key in ("tokens_per_s", "nonzero_tokens_per_s", "all_tokens_per_s"):
        for rls in [s for s in sides if s.startswith("rl_service")]:
            for den in ("trl_hf", "trl_vllm", ("trl_hf", "trl_vllm")):
                name = "trl_best" if isinstance(den, tuple) else den
                ratios[f"{key}/{rls}_over_{name}"] = spread(pair_ratios(runs, key, rls, den))
    lean = med["rl_service_lean"]
    ideal = alone["generate_s"] + alone["learner_s"]
    bar = {
        "standalone_generate_s": alone["generate_s"],
        "standalone_learner_s": alone["learner_s"],
        "ideal_step_s": ideal,
        "lean_step_s": lean["step_s"],
        "step_over_ideal": lean["step_s"] / ideal,
        "overhead_share": 1 - ideal / lean["step_s"],
        "weight_sync_share": lean["weight_sync_share"],
        # reported, not a target: the one-node mode against the same standalone sum
        "colocated_step_over_ideal": med.get("rl_service_lean_colocated", {}).get("step_s", float("nan")) / ideal,
        "standalone": alone,
    }
    out = {
        "shape": shape.__dict__,
        "model": model,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "load_1m_at_start": load,
        "machine": machine_info(),
        "runs": runs,
        "medians": med,
        "ratios": ratios,
        "step_bar": bar,
    }
    t = {}
    r = lambda k: ratios[k]["median"]  # noqa: E731
    leans = [x for x in sides if x.startswith("rl_service_lean")]
    if shape.name == "short":
        t["defaults_tokens_per_s_vs_trl_hf"] = target(r("tokens_per_s/rl_service_over_trl_hf"), 1.5)
        out["accuracy"] = accuracy(runs, sides, leans)
    for lean_side in leans:  # each lean mode held to the bars (split = the cluster default, colocated = one node)
        mode = lean_side.removeprefix("rl_service_")
        if shape.name == "short":
            t[f"{mode}_tokens_per_s_vs_trl_hf"] = target(r(f"tokens_per_s/{lean_side}_over_trl_hf"), 2.0)
            for trl in TRL_SIDES:
                gap = out["accuracy"]["gaps"][f"{lean_side}_minus_{trl}"]
                t[f"{mode}_accuracy_vs_{trl}_in_se"] = target(gap["diff_over_se"], -1.0)
        else:
            t[f"{mode}_tokens_per_s_vs_trl_best"] = target(r(f"tokens_per_s/{lean_side}_over_trl_best"), 1.5)
    t["step_over_ideal"] = target(bar["step_over_ideal"], 1.25, higher_is_better=False)
    t["overhead_share"] = target(bar["overhead_share"], 0.10, higher_is_better=False)
    t["weight_sync_share"] = target(bar["weight_sync_share"], 0.05, higher_is_better=False)
    out["targets"] = t
    return out


def accuracy(runs: list[dict], sides: list[str], leans: list[str]) -> dict:
    """Every final model of the shape through the one evaluator, then mean and SE per side."""
    scores = score_dirs([r["final_dir"] for r in runs], EVAL_PROBLEMS)
    for r, acc in zip(runs, scores):
        r["accuracy_end"] = acc
    per = {s: accuracy_summary([r["accuracy_end"] for r in runs if r["side"] == s], EVAL_PROBLEMS) for s in sides}
    gaps = {f"{lean}_minus_{t}": accuracy_gap(per[lean], per[t]) for lean in leans for t in TRL_SIDES}
    return {"problems": EVAL_PROBLEMS, "per_side": per, "gaps": gaps}


def run(quick: bool) -> dict:
    shapes = QUICK if quick else FULL
    chosen = [s for s in os.environ.get("BENCH_SHAPES", ",".join(shapes)).split(",") if s]
    rounds = int(os.environ.get("BENCH_ROUNDS") or (QUICK_ROUNDS if quick else ROUNDS))
    steps = os.environ.get("BENCH_STEPS")
    previous = _previous(quick)
    results = {}
    for name in shapes:
        if name in chosen:
            shape = shapes[name]
            if steps:
                shape = Shape(**{**shape.__dict__, "steps": int(steps)})
            results[name] = run_shape(shape, rounds)
        elif name in previous:
            results[name] = previous[name]
    return {
        "settings": {
            "rounds": rounds,
            "lean": LEAN,
            "shapes_run_now": chosen,
            "rl_service_sides": {n: rls_sides(sh) for n, sh in shapes.items()},
            "trl_sides": TRL_SIDES,
        },
        "shapes": results,
        "targets": {f"{n}/{k}": v for n, res in results.items() for k, v in res["targets"].items()},
    }


def _previous(quick: bool) -> dict:
    path = RESULTS / f"e2e_trl{'.quick' if quick else ''}.json"
    try:
        return json.loads(path.read_text()).get("shapes", {})
    except (OSError, ValueError):
        return {}


def _brief(f: dict) -> str:
    keys = ("tokens_per_s", "nonzero_tokens_per_s", "all_tokens_per_s", "step_s", "weight_sync_s")
    return "  ".join(f"{k}={f[k]:.4g}" for k in keys if isinstance(f.get(k), float))


def markdown(result: dict) -> str:
    parts = []
    for name, res in result["shapes"].items():
        s, med, bar = res["shape"], res["medians"], res["step_bar"]
        rows = [
            [
                side,
                m.get("tokens_per_s"),
                m.get("nonzero_tokens_per_s"),
                m.get("all_tokens_per_s"),
                m.get("step_s"),
                m.get("weight_sync_s"),
            ]
            for side, m in med.items()
        ]
        head = (
            f"**{name}** ({res['started']}, load {res['load_1m_at_start']:.1f}): {s['prompts']} prompts x {s['group']}"
            f" completions per step, cap {s['max_tokens']}, {s['steps']} steps (step 1 not counted), lr {s['lr']}, "
            f"{len({r['pair'] for r in res['runs']})} rounds, model `{res['model']}`\n\n"
        )
        tab = table(["side", "completion tok/s", "non-zero-grad tok/s", "all tok/s", "s/step", "sync s"], rows)
        rat = "\n".join(
            f"- {k}: {v['median']:.2f}x (min {v['min']:.2f}, max {v['max']:.2f}, {v['n']} pairs)"
            for k, v in res["ratios"].items()
            if v["median"] is not None and k.startswith("tokens_per_s/")
        )
        step = (
            f"Step bar (lean): {bar['lean_step_s']:.2f} s vs standalone engine "
            f"{bar['standalone_generate_s']:.2f} s + learner {bar['standalone_learner_s']:.2f} s = "
            f"{bar['ideal_step_s']:.2f} s -> {bar['step_over_ideal']:.2f}x; overhead "
            f"{100 * bar['overhead_share']:.0f}%, weight sync {100 * bar['weight_sync_share']:.1f}% of the step"
        )
        acc = ""
        if "accuracy" in res:
            a = res["accuracy"]
            acc = "\n\nHeld-out accuracy (one evaluator, {} problems, mean over seeds +- SE): ".format(
                a["problems"]
            ) + ", ".join(
                f"{side} {v['mean']:.3f} +- {(v['se'] or v['binomial_se']):.3f}" for side, v in a["per_side"].items()
            )
        parts.append(head + tab + "\n\nRatios, completion tokens/s:\n" + rat + "\n\n" + step + acc)
    return "\n\n".join(parts)
