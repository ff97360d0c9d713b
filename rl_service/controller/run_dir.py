"""The run directory `<run_root>/<name>/` of `rl-service train`, `train-rm` and `train-dpo`.

    run_dir, resume_from = open_run_dir(cfg, resume="auto")   # made (or continued) + config.yaml
    print("\\n".join(summary_lines(summary, run_dir)))           # what a finished run reports

A fresh run never deletes anything: a previous run's outputs are moved aside to
`<name>.prev-<timestamp>/`. Resuming from a checkpoint inside the run dir continues it in place.
"""

from __future__ import annotations

import time
from pathlib import Path

from rl_service.config import ConfigError, dump_config
from rl_service.controller.checkpoint import resolve_resume


def prepare_run_dir(cfg, keep: bool = False) -> Path:
    """`<run_root>/<name>/` with the resolved config.yaml in it. `keep`: resuming into this run
    dir, so its outputs are continued, not moved aside. `cfg`: any config with run_root and name."""
    run_dir = Path(cfg.run_root) / cfg.name
    if keep and run_dir.is_dir():
        dump_config(cfg, run_dir / "config.yaml")
        return run_dir
    model_path = getattr(getattr(cfg, "model", None), "path", None)
    if model_path and run_dir.exists() and run_dir.resolve() in Path(model_path).resolve().parents:
        # e.g. `rl-service train` with the name of the `rl-service sft` run whose final/ it starts from
        raise ConfigError(
            f"model.path {model_path!r} is inside {run_dir}, which this run would move aside: give the run "
            f"another name (name=...)"
        )
    if run_dir.exists():  # keep the previous run's outputs: move them aside, never delete
        run_dir.rename(run_dir.with_name(f"{cfg.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    return run_dir


def open_run_dir(cfg, resume: str | None = None) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from or None) for `--resume auto|PATH` (None: a fresh run).
    Raises CheckpointError when PATH holds no complete checkpoint."""
    run_dir = Path(cfg.run_root) / cfg.name
    resume_from = resolve_resume(resume, run_dir) if resume else None
    keep = resume_from is not None and run_dir.resolve() in resume_from.resolve().parents
    return prepare_run_dir(cfg, keep=keep), resume_from


def summary_lines(summary: dict, run_dir: Path) -> list[str]:
    """The lines a finished training run prints: accuracy, sample accounting, survived faults."""
    dataset = "data/train_rows" in summary  # a dataset task: solved = reward >= task.success_threshold
    metric = "accuracy" if dataset else "exact match"
    lines = [
        f"\nheld-out {metric}: {summary['eval/accuracy_start']:.3f} -> {summary['eval/accuracy_end']:.3f} "
        f"({100 * summary['eval/accuracy_gain']:+.1f} points) in {summary['steps']} steps, "
        f"{summary['wall_s']:.0f} s",
        f"samples: trained {summary['samples/trained']}, dropped stale {summary['samples/dropped_stale']}, "
        f"dropped invalid {summary['samples/dropped_invalid']}, lost {summary['samples/lost']}",
    ]
    if dataset:
        lines.append(
            f"data: {summary['data/train_rows']} train rows, {summary['data/eval_rows']} eval rows; dropped as too "
            f"long: {summary['data/dropped_long_train']} train, {summary['data/dropped_long_eval']} eval"
        )
    restarts = {k.split("_", 1)[1]: int(v) for k, v in summary.items() if k.startswith("faults/restarts_") and v}
    if restarts:
        lines.append(
            f"survived component failures (restarts): {restarts}; "
            f"{int(summary['faults/batches_regenerated'])} batches regenerated, "
            f"{summary['faults/recover_s']:.0f} s spent recovering"
        )
    lines.append(f"outputs: {run_dir}/ (metrics.jsonl, summary.json, final/)")
    return lines
