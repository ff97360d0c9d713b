"""`rl-service sweep`: a hyperparameter sweep on Ray Tune, each trial a whole training run.

rl-service sweep CONFIG [key=value ...] --grid KEY=V1,V2[,...] [--grid ...] [--samples N]
        [--max-concurrent K] [--metric NAME] [--mode max|min] [--asha] [--name NAME]
    every combination of the --grid values (times N seeds) trained as its own run under
    runs/<name>-sweep/trials/; results.csv, results.png and the best trial at the end. Rerun
    the same command after a crash: finished trials are kept, the unfinished ones resume.
"""

from __future__ import annotations


def cmd_sweep(args) -> int:
    from rl_service.sweep.sweep import run_sweep

    result = run_sweep(
        args.config,
        args.overrides,
        args.grid,
        samples=args.samples,
        max_concurrent=args.max_concurrent,
        metric=args.metric,
        mode=args.mode,
        asha=args.asha,
        name=args.name,
    )
    metric = result.metric
    for r in result.rows:
        value = r.get(metric)
        shown = f"{value:.4g}" if isinstance(value, float) else "-"
        print(f"{r['trial']}  {r['overrides']:<40} {r['status']:<13} {metric} {shown}  {r['error']}".rstrip())
    print(f"results: {result.sweep_dir / 'results.csv'}, plot: {result.sweep_dir / 'results.png'}")
    if result.best is None:
        print(f"no trial finished with {metric}")
        return 1
    best = result.best
    print(f"best: {best['trial']} ({best['overrides']}): {metric} {best[metric]:.4g}")
    return 0


def add_sweep_args(sp, grid_required: bool = True) -> None:
    """The sweep's flags (also `rl-service submit`'s, where --grid makes the job a sweep)."""
    sp.add_argument(
        "--grid",
        action="append",
        required=grid_required,
        metavar="KEY=V1,V2",
        help="a swept key and its values (repeatable)" + ("" if grid_required else "; makes the job a sweep"),
    )
    sp.add_argument("--samples", type=int, default=1, help="seeds per grid point (seed, seed+1, ...; default 1)")
    sp.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as many as fit)")
    sp.add_argument("--metric", default="eval/accuracy", help="metric to rank trials by (default eval/accuracy)")
    sp.add_argument("--mode", choices=("max", "min"), default="max", help="whether more of the metric is better")
    sp.add_argument("--asha", action="store_true", help="stop bad trials early (ASHA on the metric at each eval)")
    sp.add_argument("--name", default=None, help="sweep name (default: the config's name): runs/<name>-sweep/")


def register(subparsers) -> None:
    sp = subparsers.add_parser("sweep", help="sweep hyperparameters on Ray Tune (a training run per trial)")
    sp.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    sp.add_argument("overrides", nargs="*", help="dotted overrides for every trial, e.g. train.steps=30")
    add_sweep_args(sp)
    sp.set_defaults(fn=cmd_sweep)
