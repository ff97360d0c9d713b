"""`rl-service submit|status|logs|stop|list`: training runs as Ray Jobs (rl_service/infra/jobs.py).

    rl-service submit CONFIG [key=value ...] [--address URL] [--no-wait] [--env K=V]
        [--grid KEY=V1,V2 ... [--samples N] [--max-concurrent K] [--metric M] [--mode max|min]
        [--asha] [--name NAME]]      with --grid: the job runs `rl-service sweep` instead of train
    rl-service status|logs [--follow]|stop SUBMISSION_ID [--address URL]
    rl-service list [--address URL]

`submit` exits 1 when the job ends in anything but SUCCEEDED; an unreachable cluster, a missing
or wrong token and an unknown job are JobsErrors (exit 2, one line).
"""

from __future__ import annotations

import json
import sys

from rl_service.cli.sweep import add_sweep_args


def cmd_submit(args) -> int:
    from rl_service.infra import jobs

    env = dict(kv.split("=", 1) for kv in args.env)
    sweep = _sweep_flags(args) if args.grid else None
    client = jobs.connect(args.address)
    sid = jobs.submit(
        client,
        args.config,
        args.overrides,
        working_dir=args.working_dir,
        env_vars=env,
        submission_id=args.submission_id,
        sweep=sweep,
        grid=args.grid,
    )
    print(sid, flush=True)
    if args.no_wait:
        return 0
    for chunk in jobs.follow(client, sid):
        print(chunk, end="", flush=True)
    final = jobs.wait(client, sid, poll_s=1.0)
    print(f"\njob {sid}: {final}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1


def _sweep_flags(args) -> list[str]:
    """`rl-service sweep`'s flags as the job will run them."""
    flags = [f for g in args.grid for f in ("--grid", g)]
    flags += ["--samples", str(args.samples), "--metric", args.metric, "--mode", args.mode]
    if args.max_concurrent is not None:
        flags += ["--max-concurrent", str(args.max_concurrent)]
    if args.asha:
        flags.append("--asha")
    if args.name:
        flags += ["--name", args.name]
    return flags


def cmd_status(args) -> int:
    from rl_service.infra import jobs

    d = jobs.info(jobs.connect(args.address), args.submission_id)
    print(
        json.dumps(d, indent=2)
        if args.json
        else f"{d['submission_id']}: {d['status']}" + (f" ({d['message']})" if d["message"] else "")
    )
    return 0


def cmd_logs(args) -> int:
    from rl_service.infra import jobs

    client = jobs.connect(args.address)
    if args.follow:
        for chunk in jobs.follow(client, args.submission_id):
            print(chunk, end="", flush=True)
    else:
        print(jobs.logs(client, args.submission_id), end="")
    return 0


def cmd_stop(args) -> int:
    from rl_service.infra import jobs

    client = jobs.connect(args.address)
    jobs.stop(client, args.submission_id)
    if args.wait:
        print(f"{args.submission_id}: {jobs.wait(client, args.submission_id, timeout_s=120, poll_s=1.0)}")
    else:
        print(f"{args.submission_id}: stop requested")
    return 0


def cmd_list(args) -> int:
    from rl_service.infra import jobs

    for row in jobs.list_jobs(jobs.connect(args.address)):
        print(f"{row['submission_id']}\t{row['status']}\t{row['entrypoint']}")
    return 0


def _with_address(p):
    p.add_argument(
        "--address",
        default=None,
        help="Jobs API URL (default: $RAY_API_SERVER_ADDRESS, the local cluster, http://127.0.0.1:8265)",
    )
    return p


def register(subparsers) -> None:
    p = _with_address(subparsers.add_parser("submit", help="submit a training run as a Ray Job"))
    p.add_argument("config", help="experiment YAML inside the working dir")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=2")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env var for the job")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working dir")
    p.add_argument("--submission-id", default=None, help="choose the id instead of Ray's raysubmit_...")
    add_sweep_args(p, grid_required=False)
    p.set_defaults(fn=cmd_submit)

    p = _with_address(subparsers.add_parser("status", help="show a job's status"))
    p.add_argument("submission_id")
    p.add_argument("--json", action="store_true", help="print all fields as JSON")
    p.set_defaults(fn=cmd_status)

    p = _with_address(subparsers.add_parser("logs", help="print a job's logs"))
    p.add_argument("submission_id")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p.set_defaults(fn=cmd_logs)

    p = _with_address(subparsers.add_parser("stop", help="stop a running job"))
    p.add_argument("submission_id")
    p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    p.set_defaults(fn=cmd_stop)

    _with_address(subparsers.add_parser("list", help="list jobs on the cluster")).set_defaults(fn=cmd_list)
