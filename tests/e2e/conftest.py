"""Fixtures for end-to-end tests: one local Ray + Serve per session, bound to 127.0.0.1.

Ray gets its own short temp dir under /tmp (unix socket paths must stay < 108 chars) and
never attaches to a machine-wide cluster. Serve apps are deployed per test module and
deleted at module end; the session finalizer shuts Serve and Ray down. Temp files go
through pytest's tmp_path, under $TMPDIR = <repo>/.tmp/pytest (set by tests/integration/conftest.py).
"""

from __future__ import annotations

import pytest

from rl_service.infra.env import free_port  # noqa: F401 - test_serve_feedback imports it from here
from tests.integration.conftest import tiny_model_dir  # noqa: F401 - shared session fixture


@pytest.fixture(scope="session")
def serve_port():
    """(port of the Serve HTTP proxy) with Ray + Serve running; torn down at session end."""
    from ray import serve

    from rl_service.infra.session import local_ray

    with local_ray(num_cpus=4, prefix="rls-e2e-"):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield port
        finally:
            serve.shutdown()
