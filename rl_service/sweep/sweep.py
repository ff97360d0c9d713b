"""`rl-service sweep`: the Tuner over a sweep's points, restored if the sweep dir has one.

    run_sweep(config, overrides, grids, ...)     -> SweepResult (rows of results.csv, best row)

    check every point's config   (ConfigError, exit 2, before Ray starts)
    build each point's model     (once, here: trials would race building the same one)
    Ray (embedded, or $RAY_ADDRESS / ray.address)
      └── Tuner: one trial per point, at most `max_concurrent` at once, optional ASHA on the
          metric at each evaluation; experiment state under <sweep dir>/tune
    <sweep dir>/results.csv  one row per trial: overrides, status, final metrics, wall time
    <sweep dir>/results.png  the metric per trial over its steps, and its final value

Rerunning the same command after a crash restores the experiment (Tune's restore): finished and
failed trials are kept as they are, unfinished ones run again and continue from their own last
checkpoint. A sweep dir of a different sweep (other points or config) is refused.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from rl_service.config import ConfigError, load_config
from rl_service.sweep.grid import check_points, grid_points, overrides_of
from rl_service.sweep.trial import SweepSpec, final_metrics, run_trial, trial_name

TRIAL_CPUS = 0.01
"""What a trial's own process reserves: it only waits on its training process (whose actors
reserve the run's resources, as any run's)."""


@dataclass
class SweepResult:
    sweep_dir: Path
    rows: list[dict]
    best: dict | None
    metric: str


def run_sweep(
    config: str,
    overrides: list[str],
    grids: list[str],
    samples: int = 1,
    max_concurrent: int | None = None,
    metric: str = "eval/accuracy",
    mode: str = "max",
    asha: bool = False,
    name: str | None = None,
) -> SweepResult:
    base = load_config(config, overrides)
    points = grid_points(grids, samples, base.seed)
    trial_cfgs = check_points(config, overrides, points)
    sweep_dir = (Path(base.run_root) / f"{name or base.name}-sweep").resolve()
    _claim(sweep_dir, {"config": str(Path(config).resolve()), "overrides": overrides, "points": points})
    _build_models(trial_cfgs)

    from ray import tune

    from rl_service.infra.session import ray_session, requested_cpus

    run_cpus = max(requested_cpus(c) for c in trial_cfgs)
    if max_concurrent is None:
        max_concurrent = max(1, int((base.ray.num_cpus or os.cpu_count() or 1) // run_cpus))
    cluster = base.model_copy(deep=True)
    if not (cluster.ray.address or os.environ.get("RAY_ADDRESS")) and cluster.ray.num_cpus is None:
        cluster.ray.num_cpus = max(os.cpu_count() or 1, math.ceil(max_concurrent * (run_cpus + TRIAL_CPUS)))
    with ray_session(cluster):
        import ray

        spec = SweepSpec(
            config=str(Path(config).resolve()),
            base_overrides=tuple(overrides),
            points=tuple(points),
            trials_dir=str(sweep_dir / "trials"),
            metric=metric,
            address=os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address,
            cwd=os.getcwd(),
        )
        trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": TRIAL_CPUS})
        tuner = _tuner(trainable, sweep_dir, len(points), max_concurrent, metric, mode, asha, base)
        grid = tuner.fit()
        statuses = {int(r.config["point"]): _status(r) for r in grid}
    rows = [_row(i, p, statuses.get(i, ("not run", "")), sweep_dir, metric) for i, p in enumerate(points)]
    write_results(sweep_dir, rows, points)
    plot_results(sweep_dir, rows, points, metric)
    done = [r for r in rows if r["status"] == "done" and isinstance(r.get(metric), float)]
    best = (max if mode == "max" else min)(done, key=lambda r: r[metric]) if done else None
    return SweepResult(sweep_dir, rows, best, metric)


def _tuner(trainable, sweep_dir: Path, n_points: int, max_concurrent: int, metric, mode, asha: bool, base):
    from ray import tune

    path = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(path)):  # a crashed sweep: finished/failed trials stay, the rest run
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
    scheduler = None
    if asha:
        from ray.tune.schedulers import ASHAScheduler

        tc = base.train
        reports = (tc.steps // tc.eval_every if tc.eval_every else 0) + 1  # each eval, then the end
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1)
    return tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(list(range(n_points)))},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, max_concurrent_trials=max_concurrent, scheduler=scheduler
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(sweep_dir),
            failure_config=tune.FailureConfig(max_failures=0),  # a failed trial is reported, not retried
            verbose=0,
        ),
    )


def _claim(sweep_dir: Path, spec: dict) -> None:
    """Write <sweep dir>/sweep.json, or check that the one there describes this same sweep."""
    path = sweep_dir / "sweep.json"
    if path.is_file():
        if json.loads(path.read_text()) != spec:
            raise ConfigError(
                f"{sweep_dir} holds a different sweep (other config, overrides or grid): "
                "rerun it with its own arguments, or pick another --name"
            )
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2))


def _build_models(trial_cfgs: list) -> None:
    from rl_service.models.build import ensure_model

    seen = set()
    for cfg in trial_cfgs:
        key = (cfg.model.model_dump_json(), cfg.task.model_dump_json(), cfg.seed)
        if key not in seen:
            seen.add(key)
            ensure_model(cfg.model, cfg.task, cfg.seed)


def _status(result) -> tuple[str, str]:
    if result.error is not None:
        return "failed", str(result.error).strip().splitlines()[-1][:300]
    if (result.metrics or {}).get("done"):
        return "done", ""
    return "stopped early", ""  # ASHA ended it before its last step


def _row(i: int, point: dict, status: tuple[str, str], sweep_dir: Path, metric: str) -> dict:
    run_dir = sweep_dir / "trials" / trial_name(i)
    row = {"trial": trial_name(i), **point, "status": status[0], "error": status[1], "run_dir": str(run_dir)}
    row["overrides"] = " ".join(overrides_of(point))  # printed, not a results.csv column
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and status[0] == "done":
        row.update(final_metrics(json.loads(summary_path.read_text()), metric))
    return row


def write_results(sweep_dir: Path, rows: list[dict], points: list[dict]) -> Path:
    """results.csv: trial, its overrides, status, error, the final metrics, wall_s, run_dir."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    metrics = sorted({k for r in rows for k in r if k.startswith("eval/")})
    fields = ["trial", *keys, "status", *metrics, "step", "wall_s", "error", "run_dir"]
    path = sweep_dir / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_results(sweep_dir: Path, rows: list[dict], points: list[dict], metric: str) -> Path:
    """results.png: left, the metric over steps per trial (start, evals, end); right, its final
    value per trial (finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_service.tracking.report import eval_series, load_metrics

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, finals = [], []
    for r, point in zip(rows, points):
        label = f"{r['trial']}: " + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
        run_dir = Path(r["run_dir"])
        if (run_dir / "metrics.jsonl").is_file():
            steps, summary = load_metrics(run_dir)
            xs, ys = eval_series(steps, summary, metric)
            if xs:
                curves.plot(xs, ys, marker="o", markersize=3, label=f"{label} ({r['status']})")
        if isinstance(r.get(metric), float):
            labels.append(label)
            finals.append(r[metric])
    curves.set(title=f"{metric} per trial", xlabel="step", ylabel=metric)
    curves.grid(alpha=0.3)
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize=7, loc="best")
    bars.barh(range(len(finals)), finals, color="tab:blue")
    bars.set_yticks(range(len(finals)), labels, fontsize=7)
    bars.set(title=f"final {metric} (finished trials)", xlabel=metric)
    fig.tight_layout()
    path = sweep_dir / "results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
