"""`rl-service report RUN_DIR [--out DIR]`: PNG plots of a run's metrics.jsonl
(rl_service/tracking/report.py). A RUN_DIR without metrics.jsonl exits 2."""

from __future__ import annotations

from rl_service.config import ConfigError


def cmd_report(args) -> int:
    from rl_service.tracking.report import make_report

    try:
        paths = make_report(args.run_dir, args.out)
    except FileNotFoundError as err:  # RUN_DIR is not a run directory: one line, exit 2
        raise ConfigError(str(err)) from None
    for p in paths:
        print(p)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="draw PNG plots of a run's metrics.jsonl")
    p.add_argument("run_dir", help="runs/<name>/")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/plots)")
    p.set_defaults(fn=cmd_report)
