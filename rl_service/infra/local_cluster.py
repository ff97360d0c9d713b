"""A loopback Ray cluster on this machine, started the way users start one (`ray start`).

    up(root, head_cpus=2, nodes=[NodeSpec("rollout", 2, {"rollout": 2})])
      -> head (GCS, dashboard, Jobs API, Prometheus metrics) + extra raylets, all on 127.0.0.1
    down(root)  -> stops exactly the processes of this cluster, never anything else

Everything lives under `root`: Ray's temp dir (`root/ray`, or a short /tmp dir when the
path would overflow Ray's 108-char unix socket limit), `ray start` logs and `cluster.json`
(addresses, ports, PIDs). Processes are identified by the temp dir in their command line
plus their descendants, so `down` never needs `ray stop` (which kills every Ray on the
machine). Token auth stays on (`RAY_AUTH_MODE=token`; the token is ~/.ray/auth_token
unless RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH say otherwise; `up` writes a new one there when
there is none).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rl_service.infra.env import free_port
from rl_service.infra.files import write_atomic

STATE_FILE = "cluster.json"
DEFAULT_DIR = ".tmp/rls-cluster"
# Ray's unix sockets live at <temp>/session_<date>_<pid>/sockets/<name> and must stay under
# 108 bytes: the session part is ~42 chars and names like "dash_UsageStatsHead" ~19, so the
# temp dir itself gets at most ~36. (48 failed from a clone at /tmp/rlsclone2.)
MAX_TEMP_DIR_CHARS = 32


@dataclass
class NodeSpec:
    """One raylet: a name (for logs and reports), logical CPUs and custom resource labels."""

    name: str
    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)


def parse_node(spec: str) -> NodeSpec:
    """CLI form `name:cpus[:res=n,res=n]`, e.g. `rollout:2:rollout=2` or `train:2:learner=2,reward=1`."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"node {spec!r}: expected name:cpus[:resource=count,...] (e.g. rollout:2:rollout=2)")
    res: dict[str, float] = {}
    for item in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        key, _, val = item.partition("=")
        res[key] = float(val or 1)
    return NodeSpec(parts[0], float(parts[1]), res)


def cluster_dir() -> str:
    """Where `rl-service cluster` keeps its state unless --dir says otherwise: $RLS_CLUSTER_DIR or DEFAULT_DIR."""
    return os.environ.get("RLS_CLUSTER_DIR", DEFAULT_DIR)


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def _ray_env(loopback_only: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not attach anywhere
    # Jobs run `python -m ...`: make that the interpreter this cluster was started with.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Export ray.util.metrics every 2 s (default 10 s) so short runs show up on Prometheus.
    env.setdefault("RAY_metrics_report_interval_ms", "2000")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback_only:
        # With --node-ip-address 127.0.0.1 alone, GCS, raylet and agents still listen on all
        # interfaces; this makes Ray treat the machine as a single loopback host (measured: every
        # listener then binds 127.0.0.1). It also forbids other nodes from joining (a joining
        # node refuses to start; with it on the head only, the join hangs), so a cluster with
        # extra nodes keeps Ray's default binding (docs/cluster.md).
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def ensure_token() -> Path | None:
    """Token auth needs a token before `ray start`: when none is set (RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), write a new random one where Ray reads it (what
    `ray get-auth-token --generate` does), owner-only. -> the file written, or None."""
    import secrets

    from rl_service.infra.jobs import read_token

    if read_token():
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    print(f"no Ray auth token was set: wrote a new one to {path}", file=sys.stderr)
    return path


def _ray_temp_dir(root: Path) -> Path:
    tmp = root / "ray"
    if len(str(tmp)) > MAX_TEMP_DIR_CHARS:
        tmp = Path(tempfile.mkdtemp(prefix="rls-cluster-", dir="/tmp"))
    return tmp


def _node_cmd(node: NodeSpec, head: bool, st: dict, metrics_port: int) -> list[str]:
    cmd = [
        _ray_bin(),
        "start",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(int(node.num_cpus)),
        "--resources",
        json.dumps(node.resources),
        "--metrics-export-port",
        str(metrics_port),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--disable-usage-stats",
    ]
    if head:
        cmd += [
            "--head",
            "--port",
            str(st["gcs_port"]),
            "--temp-dir",
            st["ray_temp_dir"],
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(st["dashboard_port"]),
            "--ray-client-server-port",
            str(free_port()),
        ]
    else:
        cmd += ["--address", st["gcs_address"]]
    return cmd


def _run_start(cmd: list[str], log: Path, timeout: float, loopback_only: bool = False) -> None:
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_ray_env(loopback_only), timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"`ray start` failed (exit {proc.returncode}); log {log}:\n{tail}")


def up(
    root: str | Path,
    head_cpus: float = 2,
    head_resources: dict[str, float] | None = None,
    nodes: list[NodeSpec] | None = None,
    timeout: float = 120,
) -> dict:
    """Start head + `nodes`; returns the state written to `root/cluster.json`."""
    root = Path(root).resolve()
    if (root / STATE_FILE).exists() and status(root)["alive_pids"]:
        raise RuntimeError(f"a cluster from {root} is already running; `rl-service cluster down` first")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    ensure_token()
    head = NodeSpec("head", head_cpus, dict(head_resources or {}))
    gcs_port, dash_port = free_port(), free_port()
    st = {
        "root": str(root),
        "ray_temp_dir": str(_ray_temp_dir(root)),
        "gcs_port": gcs_port,
        "gcs_address": f"127.0.0.1:{gcs_port}",
        "dashboard_port": dash_port,
        "dashboard_url": f"http://127.0.0.1:{dash_port}",
        "nodes": [],
        "pids": [],
        "started_at": time.time(),
    }
    Path(st["ray_temp_dir"]).mkdir(parents=True, exist_ok=True)
    _write(root, st)  # written first so `down` can clean up a half-started cluster
    try:
        for node in [head, *(nodes or [])]:
            mport = free_port()
            _run_start(
                _node_cmd(node, node is head, st, mport),
                root / "logs" / f"{node.name}.log",
                timeout,
                loopback_only=not nodes,
            )
            st["nodes"].append({**asdict(node), "metrics_url": f"http://127.0.0.1:{mport}/metrics"})
            st["pids"] = our_pids(st["ray_temp_dir"], st.get("gcs_address"))
            _write(root, st)
        _wait_dashboard(st["dashboard_url"], timeout)
    except BaseException:
        down(root)
        raise
    return st


def _wait_dashboard(url: str, timeout: float) -> None:
    """The Jobs API answers once the dashboard is up (401 without a token still means up)."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"dashboard at {url} did not come up within {timeout:.0f} s") from None
            time.sleep(0.5)


def _write(root: Path, st: dict) -> None:
    write_atomic(root / STATE_FILE, json.dumps(st, indent=2))


def read_state(root: str | Path) -> dict | None:
    path = Path(root).resolve() / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmdline)
    return table


def our_pids(ray_temp_dir: str, gcs_address: str | None = None) -> list[int]:
    """Processes whose command line names this cluster's temp dir (or, for the Ray client
    server, which names no temp dir, `--address=<host>:<our GCS port>`), plus all their descendants (workers,
    vLLM engines, wandb services...). Nothing else on the machine matches."""
    table = _proc_table()
    # The client server names the GCS by the node's advertised IP, which is not always 127.0.0.1.
    port = gcs_address.rsplit(":", 1)[1] if gcs_address else None
    client = re.compile(rf"--address=\S+:{port}(\s|$)") if port else None
    ours = {
        pid
        for pid, (_, cmd) in table.items()
        if (ray_temp_dir in cmd or (client and client.search(cmd))) and pid != os.getpid()
    }
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in table.items() if ppid in ours and pid not in ours}
        ours |= kids
        grew = bool(kids)
    ours.discard(os.getpid())
    return sorted(ours)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def status(root: str | Path) -> dict:
    st = read_state(root)
    if st is None:
        return {"running": False, "alive_pids": [], "state": None}
    alive = our_pids(st["ray_temp_dir"], st.get("gcs_address"))
    return {"running": bool(alive), "alive_pids": alive, "state": st}


def down(root: str | Path, grace_s: float = 5) -> list[int]:
    """SIGTERM every process of this cluster, SIGKILL what is left after `grace_s`; returns the
    PIDs stopped. Raises if any survives."""
    root = Path(root).resolve()
    st = read_state(root)
    if st is None:
        return []
    tmp = st["ray_temp_dir"]
    # Recorded PIDs count only while they still belong to us (PIDs get reused).
    pids = set(our_pids(tmp, st.get("gcs_address"))) | {p for p in st.get("pids", []) if tmp in _cmdline(p)}
    stopped = sorted(pids)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.2)
        pids = {p for p in pids if pid_alive(p)} | set(our_pids(tmp, st.get("gcs_address")))  # late-forked workers too
        if not pids:
            break
    if pids:
        raise RuntimeError(f"could not stop Ray processes {sorted(pids)} of {root}")
    (root / STATE_FILE).unlink(missing_ok=True)
    if Path(tmp).name.startswith("rls-cluster-") and Path(tmp).parent == Path("/tmp"):
        shutil.rmtree(tmp, ignore_errors=True)  # the short temp dir made for socket-path length
    return stopped


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@contextmanager
def running(root: str | Path, **up_kwargs) -> Iterator[dict]:
    """`with running(root, nodes=[...]) as st:` a cluster for the block; always torn down, and
    raises if any of its processes survives (checked by PID)."""
    st = up(root, **up_kwargs)
    try:
        yield st
    finally:
        recorded = set(st["pids"]) | set(our_pids(st["ray_temp_dir"], st.get("gcs_address")))
        down(root)
        left = [p for p in recorded if pid_alive(p) and st["ray_temp_dir"] in _cmdline(p)]
        if left:
            raise RuntimeError(f"Ray processes of {root} still alive after down: {left}")
