"""overhead: the share of wall time no component spends computing, from the run's own metrics.

The quickstart run as configured (max_policy_lag 1). Per step, from metrics.jsonl:

    busy = generate + reward + train + weight_sync             (lag 0: the step is serial)
    busy = max(generate + reward, train + weight_sync)         (lag >= 1: generation overlaps training)
    overhead = step - busy,  share = overhead / step

generate/reward are the workers'/scorers' own times; train and weight_sync are the
driver's view of those calls (they include Ray dispatch and batch transfer, which a
learner-side timer would count as overhead: see the note in docs/benchmarks.md). The
share is the sum over steady-state steps (first step excluded) of overhead / sum of step.
Target: <= 10% of wall. Also reported: the run's whole-process wall vs its training loop.
"""

from __future__ import annotations

from bench.common import median, table, target
from bench.rls_run import train_run

FULL = dict(steps=30, repeats=2, overrides=[])
QUICK = dict(steps=2, repeats=1, overrides=["train.prompts_per_step=16"])


def step_overhead(row: dict, lag: int) -> tuple[float, float]:
    """(step seconds, overhead seconds) of one metrics row."""
    gen = row["timing_s/generate"] + row["timing_s/reward"]
    learn = row["timing_s/train"] + row["timing_s/weight_sync"]
    busy = gen + learn if lag == 0 else max(gen, learn)
    return row["timing_s/step"], row["timing_s/step"] - busy


def overhead_of(rows: list[dict], lag: int) -> dict:
    steady_rows = rows[1:] if len(rows) > 1 else rows
    pairs = [step_overhead(r, lag) for r in steady_rows]
    step, over = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return {"share": over / step, "overhead_s_per_step": over / len(pairs), "step_s_mean": step / len(pairs),
            "per_step_share": [o / s for s, o in pairs]}


def run(quick: bool) -> dict:
    from rl_service.config import load_config

    from bench.common import REPO

    s = QUICK if quick else FULL
    lag = load_config(REPO / "configs" / "quickstart.yaml", s["overrides"]).train.max_policy_lag
    runs = []
    for i in range(s["repeats"]):
        run_ = train_run(f"overhead-{i}", [f"train.steps={s['steps']}", "train.eval_every=0", *s["overrides"]])
        o = overhead_of(run_["rows"], lag)
        loop_s = sum(r["timing_s/step"] for r in run_["rows"])
        runs.append({"repeat": i, "side": "quickstart", **o, "loop_s": loop_s, "process_s": run_["process_s"],
                     "outside_loop_share": 1 - loop_s / run_["process_s"], "profile": run_["profile"]})
        print(f"  repeat {i}: overhead {100 * o['share']:.1f}% of step wall, "
              f"{o['overhead_s_per_step']:.3f} s/step", flush=True)
    share = median([r["share"] for r in runs])
    return {"settings": {"config": "configs/quickstart.yaml", "max_policy_lag": lag, "steps": s["steps"],
                         "repeats": s["repeats"], "overrides": s["overrides"]},
            "runs": runs,
            "medians": {"share": share, "overhead_s_per_step": median([r["overhead_s_per_step"] for r in runs]),
                        "step_s_mean": median([r["step_s_mean"] for r in runs]),
                        "outside_loop_share": median([r["outside_loop_share"] for r in runs])},
            "targets": {"overhead_share": target(share, 0.10, higher_is_better=False)}}


def markdown(result: dict) -> str:
    m, s = result["medians"], result["settings"]
    rows = [["quickstart", s["max_policy_lag"], m["step_s_mean"], m["overhead_s_per_step"], f"{100 * m['share']:.1f}%",
             f"{100 * m['outside_loop_share']:.0f}%"]]
    return (f"{s['steps']} steps x {s['repeats']} runs; overhead = step - busy (see bench/overhead.py), steady state\n\n"
            + table(["run", "lag", "s/step", "overhead s/step", "overhead share", "process time outside the loop"],
                    rows))
