"""Ray Jobs for `rl-service submit|status|logs|stop|list`, through Ray's Jobs SDK.

    client = connect("http://127.0.0.1:8265")          # token read from the usual places
    sid = submit(client, "configs/ci/tiny.yaml", ["train.steps=2"])
    wait(client, sid) -> "SUCCEEDED"

A job runs `python -m rl_service.cli train CONFIG overrides...` on the cluster with the
runtime env from `deploy/runtime_env.yaml` and the current directory as working dir, so the
driver sees the same code and config the user sees. Failures a user can fix (no cluster at
the address, no or a wrong auth token, unknown job) raise `JobsError` with one line; the CLI
turns that into exit code 2.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV_FILE = "deploy/runtime_env.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HELP = (
    "set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or put the cluster's token in ~/.ray/auth_token "
    "(`ray get-auth-token` on the head node prints it)"
)


class JobsError(RuntimeError):
    """A problem the user can fix, reported as one line (exit code 2)."""


def read_token() -> str | None:
    """The cluster token from RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token
    (the same places, in the same order, as Ray itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS, else a local cluster
    started by `rl-service cluster up` (its state file), else http://127.0.0.1:8265."""
    if address:
        return address
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(var, "").startswith("http"):
            return os.environ[var]
    from rl_service.infra.local_cluster import cluster_dir, read_state

    st = read_state(cluster_dir())
    return st["dashboard_url"] if st else DEFAULT_ADDRESS


def connect(address: str | None = None):
    """A JobSubmissionClient that sends the token explicitly (so it works whatever RAY_AUTH_MODE
    this process has). Raises JobsError when nothing answers at the address."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    token = read_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    from ray.exceptions import AuthenticationError

    try:
        client = JobSubmissionClient(url, headers=headers)
    except AuthenticationError as err:
        raise JobsError(_auth_message(url, token is not None, err)) from None
    except (ConnectionError, RuntimeError) as err:
        raise JobsError(
            f"no Ray cluster answers at {url} ({type(err).__name__}); start one with "
            "`rl-service cluster up` or pass --address http://HEAD:8265"
        ) from None
    client._rls_has_token = token is not None  # for the error message on a 401
    return client


def _auth_message(url: str, had_token: bool, err: Exception) -> str:
    if not had_token:
        return f"the cluster at {url} requires an auth token and none was found: {TOKEN_HELP}"
    return f"the cluster at {url} rejected the auth token ({str(err).splitlines()[0]}): {TOKEN_HELP}"


def _call(client, fn, *args, **kwargs):
    """Map the SDK's auth/lookup errors onto one-line JobsErrors."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as err:
        raise JobsError(_auth_message(client._address, getattr(client, "_rls_has_token", True), err)) from None
    except RuntimeError as err:
        msg = str(err)
        if "does not exist" in msg or "404" in msg:
            raise JobsError(f"no such job on {client._address}: {msg.splitlines()[0]}") from None
        raise


def runtime_env(working_dir: str | Path = ".", env_vars: dict[str, str] | None = None) -> dict:
    """deploy/runtime_env.yaml (when present in the working dir) + working_dir + extra env vars."""
    working_dir = Path(working_dir)
    env: dict = {}
    path = working_dir / RUNTIME_ENV_FILE
    if path.is_file():
        env = yaml.safe_load(path.read_text()) or {}
    env["working_dir"] = str(working_dir)
    env["env_vars"] = {**env.get("env_vars", {}), **(env_vars or {})}
    return env


def train_entrypoint(config: str, overrides: list[str], sweep: list[str] | None = None) -> str:
    """The job's command: `rl-service train CONFIG overrides`, or with `sweep` (the sweep's own
    flags: --grid K=V1,V2 ... --samples N ...) `rl-service sweep CONFIG overrides flags`."""
    command = "train" if sweep is None else "sweep"
    return shlex.join(["python", "-m", "rl_service.cli", command, config, *overrides, *(sweep or [])])


def submit(
    client,
    config: str,
    overrides: list[str],
    *,
    working_dir: str | Path = ".",
    env_vars: dict[str, str] | None = None,
    submission_id: str | None = None,
    sweep: list[str] | None = None,
    grid: list[str] | None = None,
) -> str:
    """Validate the config here (bad config = JobsError before anything is uploaded), then submit.
    `config` must lie inside `working_dir` (that is what the job's driver will see). With `grid`
    (the --grid specs) the job is a sweep (`sweep`: every sweep flag, --grid included): each
    trial's config is checked here first, as `rl-service sweep` checks them."""
    from rl_service.config import load_config

    if grid:
        from rl_service.sweep.grid import check_points, grid_points

        check_points(config, overrides, grid_points(grid))  # ConfigError naming the trial: exit 2
    else:
        load_config(config, overrides)  # ConfigError propagates: exit 2, nothing submitted
    wd = Path(working_dir).resolve()
    try:
        rel = Path(config).resolve().relative_to(wd)
    except ValueError:
        raise JobsError(f"config {config!r} is outside the working dir {wd}; the job could not read it") from None
    return _call(
        client,
        client.submit_job,
        entrypoint=train_entrypoint(str(rel), overrides, sweep if grid else None),
        runtime_env=runtime_env(wd, env_vars),
        submission_id=submission_id,
        metadata={"rl_service_config": str(rel), "rl_service_command": "sweep" if grid else "train"},
    )


def status(client, sid: str) -> str:
    return str(_call(client, client.get_job_status, sid).value)


def info(client, sid: str) -> dict:
    d = _call(client, client.get_job_info, sid)
    return {
        "submission_id": d.submission_id,
        "status": str(d.status.value),
        "entrypoint": d.entrypoint,
        "message": d.message,
        "start_time": d.start_time,
        "end_time": d.end_time,
    }


def logs(client, sid: str) -> str:
    return _call(client, client.get_job_logs, sid)


def follow(client, sid: str) -> Iterator[str]:
    """Chunks of the job's output as they are produced, until the job ends."""
    agen = client.tail_job_logs(sid)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield _call(client, loop.run_until_complete, agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def stop(client, sid: str) -> bool:
    return bool(_call(client, client.stop_job, sid))


def list_jobs(client) -> list[dict]:
    jobs = _call(client, client.list_jobs)
    rows = [
        {
            "submission_id": j.submission_id,
            "status": str(j.status.value),
            "entrypoint": j.entrypoint,
            "start_time": j.start_time,
        }
        for j in jobs
        if j.submission_id
    ]
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def wait(client, sid: str, timeout_s: float = 3600, poll_s: float = 2.0) -> str:
    """Poll until the job reaches SUCCEEDED / FAILED / STOPPED; returns that status."""
    deadline = time.time() + timeout_s
    while True:
        st = status(client, sid)
        if st in TERMINAL:
            return st
        if time.time() > deadline:
            raise TimeoutError(f"job {sid} still {st} after {timeout_s:.0f} s")
        time.sleep(poll_s)
