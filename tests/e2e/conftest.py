"""Fixtures for end-to-end tests. One local Ray + Serve per session, bound to 127.0.0.1
(`serve_port` in tests/conftest.py, shared with the integration tests that deploy apps).

Ray gets its own short temp dir under /tmp (unix socket paths must stay < 108 chars) and
never attaches to a machine-wide cluster. Serve apps are deployed per test module and
deleted at module end; the session finalizer shuts Serve and Ray down. Temp files go
through pytest's tmp_path, under $TMPDIR = <repo>/.tmp/pytest (set by tests/integration/conftest.py).
"""

from __future__ import annotations

from rl_service.infra.env import free_port  # noqa: F401 - test_serve_feedback imports it from here
from tests.integration.conftest import tiny_model_dir  # noqa: F401 - shared session fixture
