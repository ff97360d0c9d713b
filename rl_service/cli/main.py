"""`rl-service` command line: the parser, assembled from each command group's `register`, and
the exit codes. The commands live one group per module:

    train.py        train, build-model
    sft.py          sft                               (supervised fine-tuning, warm start before RL)
    sweep.py        sweep                             (hyperparameter sweeps on Ray Tune)
    jobs.py         submit, status, logs, stop, list   (Ray Jobs on a cluster)
    cluster.py      cluster up|down|status            (a loopback Ray cluster on this machine)
    report.py       report                            (PNG plots of a run)
    serve.py        serve, feedback export
    online.py       online                            (serve + feedback -> reward model -> PPO -> hot swap)
    preference.py   train-rm, train-dpo
    ilql.py         train-ilql                        (offline value-based RL from logged rewards)

Exit codes: 0 success, 1 the run (or job) failed, 2 bad usage, config, unreachable cluster or
auth problem: one line `error: ...` on stderr, printed before Ray starts.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from rl_service.cli import cluster, ilql, jobs, online, preference, report, serve, sft, sweep, train
from rl_service.config import ConfigError
from rl_service.controller.checkpoint import CheckpointError
from rl_service.infra.env import project_env
from rl_service.infra.jobs import JobsError

# In `rl-service --help` order. Each module's register(subparsers) adds its commands and sets
# `fn=handler(args) -> exit code` on their parsers.
COMMAND_GROUPS = (train, sft, sweep, jobs, cluster, report, serve, online, preference, ilql)
# Problems the user fixes in what they typed or where they point: exit 2, one line, no traceback.
USAGE_ERRORS = (ConfigError, CheckpointError, JobsError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rl-service", description="Distributed RL post-training on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return int(exc.code or 0)
    project_env()
    try:
        return args.fn(args)
    except USAGE_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line first, details after
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: run failed: {type(err).__name__}: {first}", file=sys.stderr)
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
