"""Run outputs: `runs/<name>/metrics.jsonl` (one JSON object per step), `summary.json`,
and a progress bar showing step, reward and accuracy."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunTracker:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, accuracy: float | None = None):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self._fh = self.metrics_path.open("a")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        file=sys.stdout, dynamic_ncols=True)
        self.last: dict[str, Any] = {}
        self.accuracy = accuracy
        """Latest held-out accuracy, kept on the bar between evaluations."""

    def log(self, metrics: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
        self._fh.flush()
        self.last = metrics
        self.accuracy = metrics.get("eval/accuracy", self.accuracy)
        shown = {"reward": metrics.get("reward/mean"), "kl": metrics.get("kl/mean"), "acc": self.accuracy}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})
        self.bar.update(1)

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2))

    def close(self) -> None:
        self.bar.close()
        self._fh.close()
