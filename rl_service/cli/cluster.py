"""Cluster subcommands of `rl-service` (registered through cli.COMMAND_MODULES).

    rl-service submit CONFIG [key=value ...] [--address URL] [--no-wait] [--env K=V]
    rl-service status|logs [--follow]|stop SUBMISSION_ID [--address URL]
    rl-service list [--address URL]
    rl-service cluster up [--node rollout:2:rollout=2 ...] | down | status   [--dir .tmp/rls-cluster]
    rl-service report RUN_DIR [--out DIR]

Exit codes as everywhere: 0 ok, 1 the job/run failed, 2 usage, config, unreachable cluster
or auth problem (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_CLUSTER_DIR = ".tmp/rls-cluster"


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _jobs_call(fn):
    """Run a jobs handler; JobsError (unreachable cluster, missing token, unknown job) -> exit 2."""
    from rl_service.infra.jobs import JobsError

    def handler(args) -> int:
        try:
            return fn(args)
        except JobsError as err:
            return _err(str(err))

    return handler


def _submit(args) -> int:
    from rl_service.infra import jobs

    env = dict(kv.split("=", 1) for kv in args.env)
    client = jobs.connect(args.address)
    sid = jobs.submit(
        client,
        args.config,
        args.overrides,
        working_dir=args.working_dir,
        env_vars=env,
        submission_id=args.submission_id,
    )
    print(sid, flush=True)
    if args.no_wait:
        return 0
    for chunk in jobs.follow(client, sid):
        print(chunk, end="", flush=True)
    final = jobs.wait(client, sid, poll_s=1.0)
    print(f"\njob {sid}: {final}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1


def _status(args) -> int:
    from rl_service.infra import jobs

    d = jobs.info(jobs.connect(args.address), args.submission_id)
    print(
        json.dumps(d, indent=2)
        if args.json
        else f"{d['submission_id']}: {d['status']}" + (f" ({d['message']})" if d["message"] else "")
    )
    return 0


def _logs(args) -> int:
    from rl_service.infra import jobs

    client = jobs.connect(args.address)
    if args.follow:
        for chunk in jobs.follow(client, args.submission_id):
            print(chunk, end="", flush=True)
    else:
        print(jobs.logs(client, args.submission_id), end="")
    return 0


def _stop(args) -> int:
    from rl_service.infra import jobs

    client = jobs.connect(args.address)
    jobs.stop(client, args.submission_id)
    if args.wait:
        print(f"{args.submission_id}: {jobs.wait(client, args.submission_id, timeout_s=120, poll_s=1.0)}")
    else:
        print(f"{args.submission_id}: stop requested")
    return 0


def _list(args) -> int:
    from rl_service.infra import jobs

    for row in jobs.list_jobs(jobs.connect(args.address)):
        print(f"{row['submission_id']}\t{row['status']}\t{row['entrypoint']}")
    return 0


def _cluster(args) -> int:
    from rl_service.infra import local_cluster as lc

    if args.action == "up":
        try:
            nodes = [lc.parse_node(n) for n in args.node]
            head_res = lc.parse_node(f"head:{args.head_cpus}:{args.head_resources}").resources
        except ValueError as err:
            return _err(str(err))
        st = lc.up(args.dir, head_cpus=args.head_cpus, head_resources=head_res, nodes=nodes)
        print(
            f"Ray cluster up: {len(st['nodes'])} node(s), {len(st['pids'])} processes, state in {args.dir}/cluster.json"
        )
        print(f"  dashboard / Jobs API: {st['dashboard_url']}   (token auth on: RAY_AUTH_MODE=token)")
        print(f"  RAY_ADDRESS for drivers: {st['gcs_address']}")
        for n in st["nodes"]:
            print(f"  node {n['name']}: cpus={n['num_cpus']} resources={n['resources']} metrics={n['metrics_url']}")
        return 0
    if args.action == "down":
        stopped = lc.down(args.dir)
        print(f"stopped {len(stopped)} process(es)" if stopped else f"no cluster recorded in {args.dir}")
        return 0
    s = lc.status(args.dir)
    if s["state"] is None:
        print(f"no cluster recorded in {args.dir}")
        return 1
    st = s["state"]
    print(
        f"{'running' if s['running'] else 'stopped'}: {len(s['alive_pids'])} process(es); "
        f"dashboard {st['dashboard_url']}; nodes {[n['name'] for n in st['nodes']]}"
    )
    return 0 if s["running"] else 1


def _report(args) -> int:
    from rl_service.tracking.report import make_report

    try:
        paths = make_report(args.run_dir, args.out)
    except FileNotFoundError as err:
        return _err(str(err))
    for p in paths:
        print(p)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def with_address(p):
        p.add_argument(
            "--address",
            default=None,
            help="Jobs API URL (default: $RAY_API_SERVER_ADDRESS, the local cluster, http://127.0.0.1:8265)",
        )
        return p

    p = with_address(sub.add_parser("submit", help="submit a training run as a Ray Job"))
    p.add_argument("config", help="experiment YAML inside the working dir")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=2")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env var for the job")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working dir")
    p.add_argument("--submission-id", default=None, help="choose the id instead of Ray's raysubmit_...")
    p.set_defaults(fn=_jobs_call(_submit))

    for name, fn, helptext in (
        ("status", _status, "show a job's status"),
        ("logs", _logs, "print a job's logs"),
        ("stop", _stop, "stop a running job"),
    ):
        p = with_address(sub.add_parser(name, help=helptext))
        p.add_argument("submission_id")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print all fields as JSON")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "stop":
            p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
        p.set_defaults(fn=_jobs_call(fn))
    with_address(sub.add_parser("list", help="list jobs on the cluster")).set_defaults(fn=_jobs_call(_list))

    p = sub.add_parser("cluster", help="start/stop a loopback Ray cluster on this machine")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--dir",
        default=os.environ.get("RLS_CLUSTER_DIR", DEFAULT_CLUSTER_DIR),
        help="state, logs and Ray temp dir of this cluster",
    )
    p.add_argument("--head-cpus", type=int, default=4, help="logical CPUs of the head node")
    p.add_argument("--head-resources", default="", help="custom resources of the head, e.g. reward=1")
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME:CPUS[:RES=N,...]",
        help="extra node, e.g. --node rollout:2:rollout=2 --node train:2:learner=2",
    )
    p.set_defaults(fn=_cluster)

    p = sub.add_parser("report", help="draw PNG plots of a run's metrics.jsonl")
    p.add_argument("run_dir", help="runs/<name>/")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/plots)")
    p.set_defaults(fn=_report)
