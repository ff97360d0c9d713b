"""The embedded Ray session a command runs in.

    ray_session(cfg)   attach to `ray.address` / $RAY_ADDRESS, or start a private Ray on
                       loopback in its own temp dir; stopped (and the dir removed) on exit

A private session never touches the machine's default Ray (/tmp/ray) and binds every
listener to 127.0.0.1, so tests and quickstarts can run side by side. It also has its own
token: Ray's token auth (RAY_AUTH_MODE=token) with a random token this process makes and hands
only to the processes it starts, not the machine-wide ~/.ray/auth_token any local user may be
able to read. Binding to loopback alone keeps other machines out, the token other local
processes: without it nothing can attach to the session, submit work or read its objects.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from rl_service.config import Config


def requested_cpus(cfg: Config) -> float:
    """CPUs the run's actors ask for in total (rollout workers, scorers, learners; colocated
    engines run inside the learners' processes and ask for nothing of their own)."""
    rollout = 0.0 if cfg.placement == "colocated" else cfg.rollout.num_workers * cfg.rollout.resources.num_cpus
    return (
        rollout
        + cfg.reward.num_scorers * cfg.reward.resources.num_cpus
        + cfg.learner.num_workers * cfg.learner.resources.num_cpus
    )


_TOKEN = secrets.token_hex(32)
"""This process's token for the private sessions it starts (one per process: Ray caches the
token it loaded, so a second session in the same process must find the same one)."""


START_ATTEMPTS = 2
STARTUP_TIMEOUT = "timed out during startup"
"""Ray gives its raylet a fixed 30 s to register (ray/_private/node.py); on a saturated machine it
can miss that (seen 2026-12-02: a serve restart while the suite ran two files at once), and the
node is then fine on a second try."""

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@contextmanager
def local_ray(num_cpus: int, loopback_only: bool = False, prefix: str = "rls-ray-") -> Iterator[str]:
    """A private Ray on 127.0.0.1 in its own temp dir (yielded), shut down and removed on exit.
    loopback_only: bind every listener to loopback, not just advertise 127.0.0.1 (it also keeps
    other nodes from joining, so the CLI sets it and multi-node test clusters do not)."""
    # Short path: Ray's unix sockets live under it and must stay < 108 chars.
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    if loopback_only:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    with session_token():
        for attempt in range(START_ATTEMPTS):
            try:
                ray.init(
                    num_cpus=num_cpus,
                    _temp_dir=tmp,
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=os.environ.get("RL_SERVICE_ACTOR_LOGS") == "1",
                )
                break
            except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for this one
                if STARTUP_TIMEOUT not in str(err) or attempt + 1 == START_ATTEMPTS:
                    raise
                ray.shutdown()  # the half-started node's processes go; a fresh one is started
        try:
            yield tmp
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def session_token() -> Iterator[str]:
    """Token auth on, with this process's own token (yielded), while the private Ray this process
    starts runs: set in the environment, which the raylet, the workers and any command started
    meanwhile inherit (a second driver or `ray job submit` run from here can attach, nothing
    else can). The variables are put back afterwards, so a later attach to a cluster of the
    user's finds that cluster's token again."""
    saved = {k: os.environ.get(k) for k in _AUTH_VARS}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    _reload_auth()
    try:
        yield _TOKEN
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_auth()


def _reload_auth() -> None:
    """Ray keeps the auth mode and token it read first; make it read them again."""
    from ray._raylet import AuthenticationTokenLoader
    from ray._raylet import Config as RayConfig

    RayConfig.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def ray_session(cfg: Config) -> Iterator[None]:
    """Attach to `ray.address` / $RAY_ADDRESS, or start an embedded Ray bound to 127.0.0.1
    in its own temp dir (never the machine's default session), and stop it afterwards.
    Inside an already initialised Ray this does nothing."""
    if ray.is_initialized():
        yield
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
        return
    with local_ray(cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(requested_cpus(cfg))), loopback_only=True):
        yield
