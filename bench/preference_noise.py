"""preference_noise: a reward model's held-out accuracy when its training labels are noisy, with and
without preference.noise handling.

The synthetic addition preferences (rl_service/preference/data.py; the held-out pairs stay clean)
are labelled by simulated annotators, 3 per pair (`annotated`): the same items, rows and seed on
every side. Sides (each `rl-service train-rm configs/rm.yaml` with fewer steps, one process):

    clean        every annotator right (accuracy 1.0): the ceiling
    noisy        annotators of accuracy 0.95, 0.9, 0.8, 0.6, 0.5 (25% of labels wrong), trained as given
    smoothing    the same rows, preference.label_smoothing 0.25 (the conservative Bradley–Terry loss)
    annotators   the same rows, preference.noise=annotators (one-coin Dawid–Skene EM, soft labels)

Reported per side: held-out pairwise accuracy at the end (one pair per held-out prompt), the
share of training labels that were wrong, and for `annotators` the accuracies EM estimated next to
the true ones. Quality, not speed: wall times are listed but not the point.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, log, table

NOISY = {"a": 0.95, "b": 0.9, "c": 0.8, "d": 0.6, "e": 0.5}
FULL = dict(items=3000, per_item=3, steps=300, batch=128)
QUICK = dict(items=200, per_item=3, steps=20, batch=32)


def _data(out: Path, annotators: dict[str, float], s: dict) -> dict:
    from rl_service.config import AdditionConfig
    from rl_service.preference.data import annotated, synthetic_preferences, write_jsonl

    train, held_out = synthetic_preferences(AdditionConfig(digits=2, num_eval=200), s["items"], 0)
    rows = annotated(train, annotators, s["per_item"], seed=0)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(rows, out / "train.jsonl")  # with each row's annotator
    write_jsonl(held_out, out / "eval.jsonl")
    truth = {p["prompt"]: p["chosen"] for p in train}
    wrong = sum(r["chosen"] != truth[r["prompt"]] for r in rows) / len(rows)
    return {"rows": len(rows), "wrong_labels": wrong}


def _train(data: Path, side: str, overrides: list[str], s: dict, runs: Path) -> dict:
    cmd = [
        sys.executable, "-m", "rl_service.cli", "train-rm", str(REPO / "configs" / "rm.yaml"),
        f"name=noise-{side}", f"run_root={runs}", f"preference.steps={s['steps']}",
        f"preference.batch_size={s['batch']}", f"preference.eval_every={s['steps']}", *overrides,
        "--data", str(data / "train.jsonl"), "--eval-data", str(data / "eval.jsonl"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side}: train-rm exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads((runs / f"noise-{side}" / "summary.json").read_text())
    found = re.search(r"annotator accuracy: (.*)", done.stdout)
    return {
        "accuracy_start": summary["eval/accuracy_start"],
        "accuracy_end": summary["eval/accuracy_end"],
        "wall_s": time.perf_counter() - t0,
        "estimated": found.group(1) if found else "",
    }


def run(quick: bool) -> dict:
    s = QUICK if quick else FULL
    out = {}
    with tempfile.TemporaryDirectory(dir=REPO / ".tmp") as tmp:
        root = Path(tmp)
        clean = _data(root / "clean", dict.fromkeys(NOISY, 1.0), s)
        noisy = _data(root / "noisy", NOISY, s)
        sides = [
            ("clean", root / "clean", [], clean),
            ("noisy", root / "noisy", [], noisy),
            ("smoothing", root / "noisy", ["preference.label_smoothing=0.25"], noisy),
            ("annotators", root / "noisy", ["preference.noise=annotators"], noisy),
        ]
        for side, data, overrides, info in sides:
            log(f"preference_noise: {side}")
            out[side] = {**info, **_train(data, side, overrides, s, root / "runs")}
    return {"settings": {**s, "annotators": NOISY}, "sides": out}


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = [
        [
            side,
            f"{r['wrong_labels']:.3f}",
            r["rows"],
            f"{r['accuracy_start']:.3f} -> {r['accuracy_end']:.3f}",
            r["wall_s"],
            r["estimated"] or "-",
        ]
        for side, r in result["sides"].items()
    ]
    truth = ", ".join(f"{k} {v}" for k, v in s["annotators"].items())
    return (
        f"`rl-service train-rm configs/rm.yaml` for {s['steps']} steps (batch {s['batch']}) on {s['items']} "
        f"synthetic pairs x {s['per_item']} simulated labels each; held-out pairs clean (200). True "
        f"annotator accuracies of the noisy sides: {truth}\n\n"
        + table(["side", "wrong labels", "rows", "held-out accuracy", "wall s", "EM's estimate"], rows)
    )
