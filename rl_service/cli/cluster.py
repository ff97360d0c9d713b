"""`rl-service cluster up|down|status`: a loopback Ray cluster on this machine
(rl_service/infra/local_cluster.py).

    rl-service cluster up [--node rollout:2:rollout=2 ...] | down | status   [--dir .tmp/rls-cluster]

`status` exits 1 when no cluster from --dir is running; a malformed --node exits 2.
"""

from __future__ import annotations

from rl_service.config import ConfigError
from rl_service.infra import local_cluster as lc


def cmd_cluster(args) -> int:
    return {"up": _up, "down": _down, "status": _status}[args.action](args)


def _up(args) -> int:
    try:
        nodes = [lc.parse_node(n) for n in args.node]
        head_res = lc.parse_node(f"head:{args.head_cpus}:{args.head_resources}").resources
    except ValueError as err:  # a flag the user typed: one line, exit 2
        raise ConfigError(str(err)) from None
    st = lc.up(args.dir, head_cpus=args.head_cpus, head_resources=head_res, nodes=nodes)
    print(f"Ray cluster up: {len(st['nodes'])} node(s), {len(st['pids'])} processes, state in {args.dir}/cluster.json")
    print(f"  dashboard / Jobs API: {st['dashboard_url']}   (token auth on: RAY_AUTH_MODE=token)")
    print(f"  RAY_ADDRESS for drivers: {st['gcs_address']}")
    for n in st["nodes"]:
        print(f"  node {n['name']}: cpus={n['num_cpus']} resources={n['resources']} metrics={n['metrics_url']}")
    return 0


def _down(args) -> int:
    stopped = lc.down(args.dir)
    print(f"stopped {len(stopped)} process(es)" if stopped else f"no cluster recorded in {args.dir}")
    return 0


def _status(args) -> int:
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


def register(subparsers) -> None:
    p = subparsers.add_parser("cluster", help="start/stop a loopback Ray cluster on this machine")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=lc.cluster_dir(), help="state, logs and Ray temp dir of this cluster")
    p.add_argument("--head-cpus", type=int, default=4, help="logical CPUs of the head node")
    p.add_argument("--head-resources", default="", help="custom resources of the head, e.g. reward=1")
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME:CPUS[:RES=N,...]",
        help="extra node, e.g. --node rollout:2:rollout=2 --node train:2:learner=2",
    )
    p.set_defaults(fn=cmd_cluster)
