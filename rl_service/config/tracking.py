"""`tracking:` where metrics go besides runs/<name>/metrics.jsonl (rl_service/tracking/)."""

from __future__ import annotations

from typing import Literal

from rl_service.config.base import Section


class TrackingConfig(Section):
    """Where metrics go besides runs/<name>/metrics.jsonl (owned by rl_service/tracking/)."""

    wandb: bool = False
    """Log every metric to Weights & Biases (offline unless WANDB_API_KEY is set)."""
    wandb_project: str = "rl_service"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user); None = the key's default entity."""
    wandb_run_id: str | None = None
    """Fixed W&B run id. None = generated once and kept in <run_dir>/wandb_run_id, so a run
    resumed in the same directory continues the same W&B run (resume="allow")."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """auto = online when WANDB_API_KEY is set, else offline (no network; `wandb sync` later)."""
    wandb_dir: str | None = None
    """Where W&B writes (its `wandb/` folder goes inside). None = $WANDB_DIR, else the run dir."""
    ray_metrics: bool = True
    """Export per-step gauges/counters with ray.util.metrics (the cluster's Prometheus endpoint)."""
