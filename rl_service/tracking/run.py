"""Run outputs: `runs/<name>/metrics.jsonl` (one JSON object per step), `consumed.jsonl`
(per step, the batch and prompt ids trained), `summary.json`, a progress bar showing step,
reward and accuracy, and, when the config asks for them:

- W&B (`tracking.wandb`): every metric, logged at its step; offline unless WANDB_API_KEY is
  set; the run id is fixed (config, or kept in `<run_dir>/wandb_run_id`) with resume="allow",
  so a resumed run continues the same W&B run. The resolved config goes to W&B too.
- Ray metrics (`tracking.ray_metrics`, only inside a connected Ray): gauges and counters on
  the cluster's Prometheus endpoint (rl_service/tracking/ray_metrics.py).

This module imports neither ray nor wandb at import time.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rl_service.infra.files import read_jsonl, write_atomic


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def wandb_run_id(run_dir: Path, name: str, fixed: str | None) -> str:
    """The config's id, else the one this run dir already has, else a new one (stored)."""
    if fixed:
        return fixed
    path = run_dir / "wandb_run_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    rid = f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)[:40]}-{secrets.token_hex(4)}"
    path.write_text(rid + "\n")
    return rid


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_wandb(run_dir: Path, cfg) -> Any:
    """wandb.init for this run (see module docstring); returns the Run."""
    import wandb

    tc = cfg.tracking
    wdir = Path(tc.wandb_dir or os.environ.get("WANDB_DIR") or run_dir).resolve()
    wdir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=tc.wandb_project,
        entity=tc.wandb_entity,
        name=cfg.name,
        id=wandb_run_id(run_dir, cfg.name, tc.wandb_run_id),
        resume="allow",
        mode=wandb_mode(tc.wandb_mode),
        dir=str(wdir),
        config=cfg.model_dump(mode="json"),
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )


def start_ray_metrics(cfg) -> Any:
    """A RayMetricsExporter when running inside a connected Ray, else None."""
    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    from rl_service.tracking.ray_metrics import RayMetricsExporter

    return RayMetricsExporter(run=cfg.name)


def truncate_logs(run_dir: Path, last_step: int) -> int:
    """Drop the rows of metrics.jsonl and consumed.jsonl a crashed run logged after its last
    checkpoint (those steps are redone), each file replaced atomically (a kill mid-rewrite
    leaves the old one). A torn last line -- the crash cut an append short -- is dropped too;
    returns how many were (warned about on stderr)."""
    torn = 0
    for path in (run_dir / "metrics.jsonl", run_dir / "consumed.jsonl"):
        if path.is_file():
            rows, cut = read_jsonl(path)
            if cut:
                print(f"warning: {path}: dropped a torn last line (the run was stopped mid-write)", file=sys.stderr)
            torn += cut
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= last_step))
    return torn


class ConsumedLog:
    """consumed.jsonl: one row per step, `{"step", "batch_ids", "prompt_ids"}` in training order."""

    def __init__(self, run_dir: Path):
        self._fh = (run_dir / "consumed.jsonl").open("a")

    def log(self, step: int, batch_ids: list[int], prompt_ids: list[int]) -> None:
        self._fh.write(json.dumps({"step": step, "batch_ids": batch_ids, "prompt_ids": prompt_ids}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class RunTracker:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, accuracy: float | None = None, cfg=None):
        """`cfg`: the full Config; its `tracking` section turns on W&B and Ray metrics."""
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self._fh = self.metrics_path.open("a")
        self.bar = tqdm(
            total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stdout, dynamic_ncols=True
        )
        self.last: dict[str, Any] = {}
        self.accuracy = accuracy
        """Latest held-out accuracy, kept on the bar between evaluations."""
        self.wandb = start_wandb(run_dir, cfg) if cfg is not None and cfg.tracking.wandb else None
        self.ray_metrics = start_ray_metrics(cfg) if cfg is not None and cfg.tracking.ray_metrics else None
        self._on_a_cluster = cfg is not None and bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        """Attached to a cluster (whose Prometheus outlives this process), not the embedded Ray."""
        if self.wandb is not None and accuracy is not None and start_step == 0:
            self.wandb.log({"eval/accuracy": accuracy}, step=0)

    def log(self, metrics: dict[str, Any]) -> None:
        clean = {k: _clean(v) for k, v in metrics.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        self.last = metrics
        self.accuracy = metrics.get("eval/accuracy", self.accuracy)
        if self.wandb is not None:
            step = metrics.get("step")
            self.wandb.log(
                {k: v for k, v in clean.items() if v is not None and k != "step"},
                step=int(step) if isinstance(step, (int, float)) else None,
            )
        if self.ray_metrics is not None:
            self.ray_metrics.update(metrics)
        shown = {"reward": metrics.get("reward/mean"), "kl": metrics.get("kl/mean"), "acc": self.accuracy}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})
        self.bar.update(1)

    def write_summary(self, summary: dict[str, Any]) -> None:
        clean = {k: _clean(v) for k, v in summary.items()}
        write_atomic(self.run_dir / "summary.json", json.dumps(clean, indent=2))
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in clean.items() if v is not None})

    def close(self) -> None:
        self.bar.close()
        self._fh.close()
        if self.ray_metrics is not None and self._on_a_cluster:
            # Ray exports a process's metrics every RAY_metrics_report_interval_ms and drops what is
            # pending when the process exits: wait one interval so the last step's values reach the
            # cluster's Prometheus (seen: steps_total scraped at 1 of 2 when the driver ended quickly).
            time.sleep(min(float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000, 10.0) + 0.5)
            self.ray_metrics = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
