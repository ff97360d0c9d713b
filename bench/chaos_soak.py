"""chaos_soak: many chaos trials outside the suite, each with its own seed and a random plan.

    U                      one uninterrupted run (rl_service/testing/chaos_trial.py: lag 0, 16 steps,
                           a checkpoint after every step, 2 rollout workers in the trials)
    for each trial k:      seed = BASE_SEED + k, plan = KILLS random roles (each of rollout,
                           reward, queue, learner at least once), the driver last
        C                  the run under rl_service/testing/chaos.py's SIGKILLs
        C2                 --resume auto after the driver's death
        compared with U    chaos_trial.differences: ledger, consumed.jsonl, metrics rows,
                           final weights within 1e-5; processes left 90 s after C's driver died

A trial passes when every planned kill was made, C died by the driver's SIGKILL, C2 ended
with exit 0, nothing differs from U and nothing was left behind. A failure keeps its run dir
(`.tmp/chaos_soak/trial-<k>/`, with each run's stderr) and is rerun by its seed:
RL_SERVICE_CHAOS_SEED=<seed> for the suite's plan, or this benchmark's `--quick` loop.

The suite (tests/integration/test_chaos.py) makes 10 kills on one fixed seed; this makes
TRIALS x KILLS more. Counts: kills made per role, trials passed; times: C and C2 wall seconds.
"""

from __future__ import annotations

import random
import shutil

from bench.common import REPO, log, median, table
from bench.models import warm_model
from rl_service.testing.chaos_trial import differences, error_line, random_plan, run_train

BASE_SEED = 20261203
FULL = dict(trials=5, kills=10)
QUICK = dict(trials=1, kills=6)
LEFTOVER_GRACE_S = 90.0
"""After a driver's SIGKILL Ray's agents take ~60 s to exit (see tests/integration/test_chaos.py)."""


def trial(root, u_dir, model, k: int, kills: int) -> dict:
    seed = BASE_SEED + k
    plan = random_plan(random.Random(seed), kills)
    runs = root / f"trial-{k}"
    shutil.rmtree(runs, ignore_errors=True)
    proc, c_s, chaos = run_train(runs, "C", model, "rollout.num_workers=2", plan=plan, seed=seed)
    made = [kill.role for kill in chaos.kills]
    out = {
        "seed": seed,
        "plan": plan,
        "kills": chaos.record()["kills"],
        "c_s": round(c_s, 1),
        "c_exit": proc.returncode,
        "problems": [],
    }
    if made != plan:
        out["problems"].append(f"kills made {made}, planned {plan}")
    if proc.returncode != -9:
        out["problems"].append(f"C exit {proc.returncode}: {error_line(proc)[:300]}")
    if proc.returncode == -9:  # the driver died as planned: resume
        proc2, c2_s, _ = run_train(runs, "C", model, "rollout.num_workers=2", resume="auto")
        out["c2_s"] = round(c2_s, 1)
        if proc2.returncode != 0:
            out["problems"].append(f"C2 exit {proc2.returncode}: {error_line(proc2)[:300]}")
        else:
            out["problems"] += differences(u_dir, runs / "C")
    left = chaos.leftovers(LEFTOVER_GRACE_S)
    chaos.reap()
    if left:
        out["problems"].append(f"left behind: {left}")
    out["passed"] = not out["problems"]
    if out["passed"]:
        shutil.rmtree(runs, ignore_errors=True)
    log(f"chaos_soak trial {k} seed {seed}: {'passed' if out['passed'] else out['problems']}")
    return out


def run(quick: bool) -> dict:
    s = QUICK if quick else FULL
    model = warm_model("test")
    root = REPO / ".tmp" / "chaos_soak"
    shutil.rmtree(root / "U", ignore_errors=True)
    proc, u_s, chaos = run_train(root, "U", model)
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {error_line(proc)}")
    chaos.reap()
    trials = [trial(root, root / "U", model, k, s["kills"]) for k in range(s["trials"])]
    roles: dict[str, int] = {}
    for t in trials:
        for kill in t["kills"]:
            roles[kill["role"]] = roles.get(kill["role"], 0) + 1
    return {
        "settings": {**s, "base_seed": BASE_SEED, "model": str(model)},
        "u_s": round(u_s, 1),
        "runs": trials,
        "summary": {
            "trials": len(trials),
            "passed": sum(t["passed"] for t in trials),
            "kills_made": sum(len(t["kills"]) for t in trials),
            "kills_by_role": roles,
            "c_s_median": median([t["c_s"] for t in trials]),
            "c2_s_median": median([t["c2_s"] for t in trials if "c2_s" in t]),
        },
    }


def markdown(result: dict) -> str:
    s, m = result["settings"], result["summary"]
    rows = [
        [t["seed"], " ".join(t["plan"]), len(t["kills"]), t["c_s"], t.get("c2_s", "-"), "yes" if t["passed"] else "NO"]
        for t in result["runs"]
    ]
    fails = [f"- seed {t['seed']}: {'; '.join(t['problems'])}" for t in result["runs"] if not t["passed"]]
    return (
        f"{m['trials']} trials x {s['kills']} kills (seeds {s['base_seed']}..), 2 rollout workers, 16 steps, "
        f"lag 0; U {result['u_s']} s. Passed {m['passed']}/{m['trials']}; kills made {m['kills_made']} "
        f"({', '.join(f'{r} {n}' for r, n in sorted(m['kills_by_role'].items()))}); median C {m['c_s_median']} s, "
        f"C2 {m['c2_s_median']} s.\n\n"
        + table(["seed", "plan", "kills made", "C s", "C2 s", "passed"], rows)
        + ("\n\nFailures:\n\n" + "\n".join(fails) if fails else "")
    )
