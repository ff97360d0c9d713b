"""Fixtures for end-to-end tests: one local Ray + Serve per session, bound to 127.0.0.1.

Ray gets its own short temp dir under /tmp (unix socket paths must stay < 108 chars) and
never attaches to a machine-wide cluster. Serve apps are deployed per test module and
deleted at module end; the session finalizer shuts Serve and Ray down. Temp files go
through pytest's tmp_path, under $TMPDIR = <repo>/.tmp/pytest (set by tests/integration/conftest.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import pytest

from rl_service.infra.env import free_port  # noqa: F401 - test_serve_feedback imports it from here
from tests.integration.conftest import tiny_model_dir  # noqa: F401 - shared session fixture


@pytest.fixture(scope="session")
def serve_port():
    """(port of the Serve HTTP proxy) with Ray + Serve running; torn down at session end."""
    import ray
    from ray import serve

    tmp = tempfile.mkdtemp(prefix="rls-e2e-", dir="/tmp")
    ray.init(
        num_cpus=4,
        _temp_dir=tmp,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=os.environ.get("RL_SERVICE_ACTOR_LOGS") == "1",
    )
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
