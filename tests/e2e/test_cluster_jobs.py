"""Acceptance: a loopback Ray cluster started with `rl-service cluster up` (token auth on),
the CI config submitted as a Ray Job, polled to SUCCEEDED, logs fetched, the W&B offline
run and the Prometheus metrics checked, the cluster taken down with none of its processes
left (checked by PID). Plus `stop`, `list` and the one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from rl_service.infra import jobs, local_cluster
from rl_service.infra.env import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl_service.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wandb_history(path: Path) -> list[dict]:
    """History rows of a W&B transaction log (.wandb): LevelDB-style 32 KiB blocks of
    [crc32, length, type] records, each a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4) and buf:
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def scrape(url: str) -> dict[str, float]:
    """{metric name: value} of the rl_service series on a Prometheus endpoint."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_rl_service_\w+)\{[^}]*\} (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def cluster():
    root = REPO / ".tmp" / "cluster" / f"jobs-{uuid.uuid4().hex[:6]}"
    env = {"RLS_CLUSTER_DIR": str(root)}
    token_path = None
    if not jobs.read_token():  # run alone: `cluster up` writes one, here rather than in ~/.ray
        token_path = root / "auth_token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    t0 = time.time()
    up = cli("cluster", "up", "--head-cpus", "4", env=env)
    assert up.returncode == 0, up.stderr
    assert token_path is None or token_path.stat().st_mode & 0o777 == 0o600
    st = local_cluster.read_state(root)
    st["up_s"] = time.time() - t0
    try:
        yield st, env
    finally:
        pids = set(st["pids"]) | set(local_cluster.our_pids(st["ray_temp_dir"], st["gcs_address"]))
        down = cli("cluster", "down", env=env)
        assert down.returncode == 0, down.stderr
        assert pids and not [p for p in pids if local_cluster.pid_alive(p)], "Ray processes of ours survived"
        assert local_cluster.our_pids(st["ray_temp_dir"], st["gcs_address"]) == []
        if token_path is not None:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


def test_errors_are_one_line_exit_2(cluster):
    st, _ = cluster
    for env, words in (
        ({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "/nonexistent"}, "none was found"),
        ({"RAY_AUTH_TOKEN": "not-the-token"}, "rejected the auth token"),
    ):
        r = cli("list", "--address", st["dashboard_url"], env=env)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("status", "raysubmit_nope", "--address", st["dashboard_url"])
    assert r.returncode == 2 and "no such job" in r.stderr
    r = cli("list", "--address", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "no Ray cluster answers" in r.stderr
    # a sweep whose grid makes a bad trial config: named, nothing submitted
    before = len(jobs.list_jobs(jobs.connect(st["dashboard_url"])))
    r = cli("submit", "configs/ci/tiny.yaml", "--grid", "learner.lr=1e-4,-1", "--address", st["dashboard_url"])
    assert r.returncode == 2 and "trial 1 (learner.lr=-1)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert len(jobs.list_jobs(jobs.connect(st["dashboard_url"]))) == before


def test_submit_tiny_run_to_succeeded(cluster, tmp_path):
    st, env = cluster
    out = REPO / ".tmp" / "cluster" / "jobs-out" / uuid.uuid4().hex[:6]
    wandb_dir = out / "wandb-dir"
    r = cli(
        "submit",
        "configs/ci/tiny.yaml",
        "train.steps=2",
        "tracking.wandb=true",
        f"run_root={out}",
        f"model.cache_dir={REPO / '.cache' / 'test-models'}",
        "--no-wait",
        "--env",
        f"WANDB_DIR={wandb_dir}",
        env=env,
    )  # address from the cluster state file
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    assert sid.startswith("raysubmit_")

    client = jobs.connect(st["dashboard_url"])
    seen: dict[str, float] = {}
    deadline, state = time.time() + 240, None
    while time.time() < deadline:
        state = jobs.status(client, sid)
        for node in st["nodes"]:  # gauges exist only while the driver lives: scrape during the run
            seen.update(scrape(node["metrics_url"]))
        if state in jobs.TERMINAL:
            break
        time.sleep(2)
    logs = cli("logs", sid, env=env).stdout
    assert state == "SUCCEEDED", logs[-3000:]
    assert "held-out exact match" in logs and "samples: trained" in logs
    assert sid in cli("list", env=env).stdout

    # Prometheus: the project's gauges during the run, counters with the final totals.
    for node in st["nodes"]:
        seen.update(scrape(node["metrics_url"]))
    for name in (
        "ray_rl_service_reward_mean",
        "ray_rl_service_perf_tokens_per_s",
        "ray_rl_service_queue_prompts_depth",
        "ray_rl_service_policy_lag_mean",
        "ray_rl_service_samples_dropped_invalid",
    ):
        assert name in seen, f"{name} never appeared; saw {sorted(seen)}"
    assert seen["ray_rl_service_steps_total"] == 2
    assert seen["ray_rl_service_samples_trained"] in (16 * 4, 2 * 16 * 4)  # prompts x samples per step
    assert seen["ray_rl_service_samples_dropped_stale"] == 0

    # W&B offline run: one history row per step with the step's metrics, id kept in the run dir.
    run_dir = out / "ci-tiny"
    metrics = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (log,) = list(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    rows = {r["_step"]: r for r in wandb_history(log)}
    for m in metrics:
        assert rows[m["step"]]["reward/mean"] == pytest.approx(m["reward/mean"])
        assert rows[m["step"]]["kl/mean"] == pytest.approx(m["kl/mean"])
    assert "eval/accuracy" in rows[0]

    rep = cli("report", str(run_dir))
    assert rep.returncode == 0 and len(rep.stdout.split()) == 5


def test_submit_a_sweep_runs_it_as_a_job(cluster):
    """`rl-service submit CONFIG --grid ...`: the job is `rl-service sweep` on the cluster, each
    trial a run of its own. A trial that fails (here its KL guard halts it at the first update:
    kl_hard_limit 1e-12) is reported as failed with its error, and the sweep still succeeds."""
    st, env = cluster
    out = REPO / ".tmp" / "cluster" / "jobs-out" / uuid.uuid4().hex[:6]
    r = cli(
        "submit",
        "configs/ci/tiny.yaml",
        "train.steps=1",
        f"run_root={out}",
        f"model.cache_dir={REPO / '.cache' / 'test-models'}",
        # a reward signal, so the policy moves at all (every answer of the tiny model scores 0 on
        # exact match, and with zero advantages the KL guard never sees a KL above 0)
        f"reward.fn={REPO / 'tests' / 'integration' / 'partial_credit.py'}:leading_digits",
        "--grid",
        "learner.kl_hard_limit=1,1e-12",
        "--max-concurrent",
        "1",
        "--name",
        "jobsweep",
        env=env,
        timeout=600,
    )  # waits for the job, streaming its logs
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "best: trial-" in r.stdout
    info = jobs.info(jobs.connect(st["dashboard_url"]), r.stdout.strip().splitlines()[0])
    assert info["entrypoint"].split()[3] == "sweep" and "--grid learner.kl_hard_limit=1,1e-12" in info["entrypoint"]
    with open(out / "jobsweep-sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["status"]) for r in rows] == [("trial-000", "done"), ("trial-001", "failed")], rows
    assert "kl_hard_limit" in rows[1]["error"] and rows[0]["step"] == "1", rows
    assert (out / "jobsweep-sweep" / "trials" / "trial-000" / "summary.json").is_file()


def test_stop_a_running_job(cluster):
    st, env = cluster
    r = cli(
        "submit",
        "configs/ci/tiny.yaml",
        "train.steps=50",
        f"run_root={REPO / '.tmp' / 'cluster' / 'jobs-out'}",
        "name=stop-me",
        "--no-wait",
        "--address",
        st["dashboard_url"],
    )
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    client = jobs.connect(st["dashboard_url"])
    deadline = time.time() + 60
    while jobs.status(client, sid) == "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    r = cli("stop", sid, "--wait", env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("STOPPED"), r.stdout + r.stderr
