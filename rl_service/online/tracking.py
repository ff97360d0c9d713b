"""The online service's metrics: one row per round (and per rollback) in `<run dir>/metrics.jsonl`,
the same rows as Ray gauges (`ray_rl_service_online_*`, tracking/ray_metrics.py) and, with
`tracking.wandb`, W&B. `rl-service report RUN_DIR` draws them (plots/online.png)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rl_service.tracking.run import _clean, start_ray_metrics, start_wandb


class OnlineMetrics:
    def __init__(self, run_dir: Path, cfg):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self._wandb = None
        self._ray = None
        self._last_pairs: tuple[float, int | None] = (time.time(), None)
        self.rows = sum(1 for x in self.path.read_text().splitlines() if x.strip()) if self.path.is_file() else 0
        """Rows logged so far, also before a restart: each row's `step` (W&B wants it increasing)."""

    def log(self, row: dict[str, Any]) -> None:
        self.rows += 1
        row = {"step": self.rows, **row}
        clean = {k: _clean(v) for k, v in row.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
        tc = self.cfg.tracking
        if tc.ray_metrics and self._ray is None:
            self._ray = start_ray_metrics(self.cfg)
        if self._ray is not None:
            self._ray.update(row)
        if tc.wandb and self._wandb is None:
            self._wandb = start_wandb(self.path.parent, self.cfg)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None and k != "step"}, step=int(row["step"]))

    def log_state(self, st, store, row: dict[str, Any]) -> None:
        """One row: the service's state now (served version, rollbacks, feedback, the adopted
        reward model's accuracy) and what the round (or rollback) in `row` measured."""
        now = time.time()
        n = len(store.preference_pairs()) if store is not None else None
        t0, n0 = self._last_pairs
        rate = (n - n0) / ((now - t0) / 60) if n is not None and n0 is not None and now > t0 else None
        self._last_pairs = (now, n)
        self.log(
            {
                "time": now,
                "online/rounds": st.rounds,
                "online/version_served": st.serving,
                "online/versions_published": sum(1 for x in st.versions.values() if "canary_live" in x),
                "online/rollbacks": st.rollbacks,
                "online/feedback_pairs_total": n,
                "online/feedback_per_min": rate,
                "online/rm_accuracy": st.rm.accuracy,
                **row,
            }
        )

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
