"""Benchmark entry point (not run by `make test`).

    .venv/bin/python -m bench.run NAME [--quick] [--profile]
    NAME: rollout | e2e_trl | overlap | weight_sync | overhead | learner_step | packing | lora | serve | all
          | chaos_soak (not in `all`: random SIGKILL trials, bench/chaos_soak.py)
          | preference_noise (not in `all`: reward-model accuracy under label noise)
          | online_loop (not in `all`: `rl-service online` with simulated users, clean and noisy)

Each benchmark writes bench/results/<NAME>.json (`<NAME>.quick.json` with --quick):
machine, versions, command, settings, every run's figures, medians, targets; and
replaces its table in docs/benchmarks.md. --quick is a smoke run (tiny models, 1-2
steps/repeats) proving the benchmark works end to end; its figures are labelled as such
and never replace a full run's table. `all` runs each benchmark in its own process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS, log, machine_info, setup_env, table, write_result

DOCS = REPO / "docs" / "benchmarks.md"
MODULES = {
    "rollout": "bench.rollout",
    "e2e_trl": "bench.e2e_trl",
    "overlap": "bench.overlap",
    "weight_sync": "bench.weight_sync",
    "overhead": "bench.overhead",
    "learner_step": "bench.learner_step",
    "packing": "bench.packing",
    "lora": "bench.lora",
    "chaos_soak": "bench.chaos_soak",
    "preference_noise": "bench.preference_noise",
    "online_loop": "bench.online_loop",
}
ORDER = ["rollout", "weight_sync", "overlap", "overhead", "learner_step", "packing", "lora", "e2e_trl", "serve"]
"""What `all` runs: the speed benchmarks. chaos_soak (faults, ~5 min a trial) and preference_noise
(reward-model quality under label noise, ~12 min) and online_loop (`rl-service online` with
simulated users, ~45 min) run only by name."""


def run_serve(quick: bool) -> dict:
    """bench/serve.py in its own process (it starts Ray Serve); its JSON becomes this result's body."""
    out = RESULTS / f"serve{'.quick' if quick else ''}.json"
    args = ["--requests", "8", "--repeats", "1"] if quick else []
    subprocess.run([sys.executable, "-m", "bench.serve", *args, "--out", str(out)], cwd=REPO, check=True)
    body = json.loads(out.read_text())
    return {k: v for k, v in body.items() if k in ("settings", "runs", "medians", "serve_overhead_c1")}


def serve_markdown(result: dict) -> str:
    s, med = result["settings"], result["medians"]
    rows = [[mode, m["p50_ms"], m["p99_ms"], m["requests_per_s"]] for mode, m in med.items()]
    o = result["serve_overhead_c1"]
    return (
        f"{s['requests']} greedy requests x {s['max_tokens']} tokens, {s['repeats']} repeats, engine {s['engine']}\n\n"
        + table(["mode", "p50 ms", "p99 ms", "req/s"], rows)
        + f"\n\nServe overhead per request (c=1): p50 +{o['p50_ms']:.1f} ms, p99 +{o['p99_ms']:.1f} ms"
    )


def targets_markdown(targets: dict) -> str:
    if not targets:
        return ""
    rows = [
        [name, t["value"], f"{t['direction']} {t['bar']}", {True: "met", False: "MISSED", None: "n/a"}[t["met"]]]
        for name, t in targets.items()
    ]
    return "\n\nTargets:\n\n" + table(["target", "value", "bar", "status"], rows)


def profiles_markdown(result: dict) -> str:
    """Stage shares of py-spy samples per profiled run (bench/profile.py), when --profile was on."""
    runs = [r for r in result.get("runs", []) if isinstance(r, dict) and r.get("profile")]
    if not runs:
        return ""
    stages = ["generate", "reward", "train", "weight_sync", "eval", "startup", "other"]
    rows = [
        [f"{r.get('side')} #{r.get('pair', r.get('repeat', 0))}"]
        + [f"{100 * r['profile']['shares'].get(k, 0):.0f}%" for k in stages]
        for r in runs
    ]
    return (
        "\n\npy-spy stage shares (non-idle samples of the processes py-spy could read; see Method notes):\n\n"
        + table(["run", *stages], rows)
    )


def update_docs(name: str, body_md: str, result_path: Path, quick: bool, load_start: float) -> None:
    """Replace the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in docs/benchmarks.md.
    A smoke (--quick) table never replaces a full run's."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = DOCS.read_text() if DOCS.is_file() else ""
    if start not in text:
        text += f"\n### {name}\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    old, tail = rest.split(end, 1)
    if quick and "Mode: full" in old:
        log(f"docs: keeping the full-run table of {name} (this was a --quick run)")
        return
    m = machine_info()
    label = (
        (
            "**Smoke figures** (`--quick`: tiny sizes, 1-2 steps, on a shared machine loaded by other jobs; "
            "they prove the benchmark runs, they are not the measurement)"
        )
        if quick
        else "Mode: full"
    )
    meta = (
        f"{label}. {time.strftime('%Y-%m-%d %H:%M')}, {m['cpus']} x {m['processor']}, 1-min load "
        f"{load_start:.1f} at the start, {m['loadavg_1m']:.1f} at the end; `{result_path.relative_to(REPO)}`"
    )
    DOCS.write_text(f"{head}{start}\n{meta}\n\n{body_md}\n{end}{tail}")


def run_one(name: str, quick: bool, argv: list[str]) -> Path:
    started, load = time.time(), os.getloadavg()[0]
    log(f"{name} ({'quick' if quick else 'full'}) starting")
    if name == "serve":
        result = run_serve(quick)
        md = serve_markdown(result)
    else:
        mod = importlib.import_module(MODULES[name])
        result = mod.run(quick)
        md = mod.markdown(result)
    result["machine_load_1m_at_start"] = load
    path = write_result(name, result, argv, quick, started)
    update_docs(name, md + targets_markdown(result.get("targets", {})) + profiles_markdown(result), path, quick, load)
    log(f"{name}: wrote {path.relative_to(REPO)} in {time.time() - started:.0f}s")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog="python -m bench.run", description="rl_service benchmarks (see docs/benchmarks.md)"
    )
    ap.add_argument("name", choices=[*ORDER, "chaos_soak", "preference_noise", "online_loop", "all"])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1-2 steps")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample every training run with py-spy; stage shares go into the JSON (bench/profile.py)",
    )
    args = ap.parse_args(argv)
    if args.profile:
        os.environ["BENCH_PROFILE"] = "1"  # read by bench/profile.py, inherited by `all`'s children
    os.chdir(REPO)
    setup_env()
    if args.name != "all":
        run_one(args.name, args.quick, argv)
        return 0
    failed = []
    for name in ORDER:  # each in its own process: engines and Ray sessions never share one
        cmd = [sys.executable, "-m", "bench.run", name, *(["--quick"] if args.quick else [])]
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            failed.append(name)
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
