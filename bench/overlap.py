"""overlap: max_policy_lag 0 vs 1 on the same run (the quickstart config), alternating.

With lag 0 the loop is serial: generate -> reward -> train -> sync, so a step should cost
about the SUM of the component times. With lag 1 the workers generate the next step
while the learner trains, so a perfectly overlapped step costs about the MAX of
(generate + reward) and (train + weight sync). Reported per lag: median step time
against that sum and that max (steady state: first step excluded), from the run's own
metrics.jsonl. On 2 shared cores overlapped components also compete for the CPU, so
"max" is a bound, not a promise.
"""

from __future__ import annotations

from bench.common import alternate, env_sized, median, medians, pair_ratios, table
from bench.overhead import overhead_of
from bench.rls_run import timing_summary, train_run

FULL = dict(steps=20, rounds=2, overrides=[])
QUICK = dict(steps=2, rounds=1, overrides=["train.prompts_per_step=16"])


# Per-stage timings of a step (seconds), in the order the tables show them.
STAGES = ("generate_s", "reward_s", "wait_s", "train_s", "weight_sync_s", "train_compute_s", "publish_s", "load_s")


def step_bounds(t: dict) -> dict:
    """Sum and max of the component times of a step (medians from timing_summary). The learn
    side uses the components' own timers when logged: the learner's compute
    (`train_compute`) + publish + the slowest worker's load, so Ray dispatch, batch transfer
    and driver waits are not counted as component work (they are what overlap cannot hide)."""
    gen = t["generate_s"] + t["reward_s"]
    own = [t.get(k) for k in ("train_compute_s", "publish_s", "load_s")]
    learn = sum(own) if all(x is not None for x in own) else t["train_s"] + t["weight_sync_s"]
    return {"sum_s": gen + learn, "max_s": max(gen, learn), "learn_s": learn}


def lag_side(lag: int, s: dict, i: int) -> dict:
    run = train_run(
        f"overlap-lag{lag}-{i}",
        [f"train.steps={s['steps']}", f"train.max_policy_lag={lag}", "train.eval_every=0", *s["overrides"]],
    )
    t = timing_summary(run["rows"])
    b = step_bounds(t)
    o = overhead_of(run["rows"], lag) if t.get("train_compute_s") is not None else {"share": None}
    return {
        **{k: t[k] for k in ("step_s", *STAGES, "tokens_per_s")},
        "overhead_share": o["share"],
        **b,
        "step_over_sum": t["step_s"] / b["sum_s"],
        "step_over_max": t["step_s"] / b["max_s"],
        "accuracy_end": run["summary"]["eval/accuracy_end"],
        "profile": run["profile"],
    }


def run(quick: bool) -> dict:
    s = QUICK if quick else env_sized(FULL)
    runs = alternate(s["rounds"], {"lag0": lambda i: lag_side(0, s, i), "lag1": lambda i: lag_side(1, s, i)})
    keys = [
        "step_s",
        "sum_s",
        "max_s",
        "step_over_sum",
        "step_over_max",
        *STAGES,
        "overhead_share",
        "tokens_per_s",
        "accuracy_end",
    ]
    ratios = pair_ratios(runs, "step_s", "lag1", "lag0")
    return {
        "settings": {
            "config": "configs/quickstart.yaml",
            "steps": s["steps"],
            "rounds": s["rounds"],
            "overrides": s["overrides"],
        },
        "runs": runs,
        "medians": medians(runs, keys),
        "pair_ratios": {"lag1_step_over_lag0_step": ratios},
        "median_ratios": {"lag1_step_over_lag0_step": median(ratios)},
        "targets": {},
    }


def markdown(result: dict) -> str:
    rows = [
        [
            lag,
            m["step_s"],
            m["sum_s"],
            m["max_s"],
            m["step_over_sum"],
            m["step_over_max"],
            m["generate_s"],
            m["train_s"],
            m.get("train_compute_s"),
            m["weight_sync_s"],
            m.get("publish_s"),
            m.get("load_s"),
            None if m.get("overhead_share") is None else f"{100 * m['overhead_share']:.1f}%",
        ]
        for lag, m in result["medians"].items()
    ]
    s = result["settings"]
    r = result["median_ratios"]["lag1_step_over_lag0_step"]
    return (
        f"quickstart config, {s['steps']} steps, {s['rounds']} round(s) (lag 0, lag 1 in turn); seconds are "
        "steady-state medians (first step excluded); sum/max of (generate + reward) and (learner compute + "
        "publish + load); overhead share as in bench/overhead.py (components' own timers)\n\n"
        + table(
            [
                "lag",
                "s/step",
                "sum",
                "max",
                "step/sum",
                "step/max",
                "generate",
                "train (driver)",
                "train_compute",
                "weight sync (driver)",
                "publish",
                "load",
                "overhead share",
            ],
            rows,
        )
        + ("" if r is None else f"\n\nlag-1 step / lag-0 step (median of per-round ratios): {r:.2f}")
    )
