"""The private Ray a command (or this suite) starts admits only its own token.

A second driver attaches with the token the session handed to its children; the same attach
with a wrong token, with the machine-wide ~/.ray/auth_token (what a plain local `ray.init`
would have used, and any local user who can read the file would hold) or with auth turned off
is refused. After the session the auth variables are the user's again (unit check below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

ATTACH = (
    "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(int(ray.cluster_resources()['CPU']))"
)


def _attach(address: str, env_changes: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run([sys.executable, "-c", ATTACH, address], env=env, capture_output=True, text=True, timeout=120)


def _cases() -> list:
    """Each refusal costs ~20 s (the client retries before giving up): one case."""
    home_token = Path.home() / ".ray" / "auth_token"
    if home_token.is_file():  # the machine-wide token (a wrong one here), if a Ray here ever wrote one
        wrong = pytest.param({"RAY_AUTH_TOKEN": home_token.read_text().strip()}, id="machine-wide-token")
    else:
        wrong = pytest.param({"RAY_AUTH_TOKEN": "0" * 64}, id="wrong-token")
    return [wrong]  # (auth turned off on the client is refused too: measured, left out for time)


def test_a_driver_with_the_session_token_attaches(session_ray):
    done = _attach(ray.get_runtime_context().gcs_address, {})
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr[-2000:]


@pytest.mark.parametrize("env_changes", _cases())
def test_a_driver_without_it_is_refused(session_ray, env_changes):
    done = _attach(ray.get_runtime_context().gcs_address, env_changes)
    assert done.returncode != 0, done.stdout
    assert "auth" in done.stderr.lower() or "token" in done.stderr.lower(), done.stderr[-2000:]


RESTORE = """
import os
from rl_service.infra.session import session_token
with session_token() as token:
    assert os.environ["RAY_AUTH_TOKEN"] == token and len(token) == 64
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN_PATH" not in os.environ
print(os.environ.get("RAY_AUTH_TOKEN_PATH"), os.environ.get("RAY_AUTH_TOKEN"), os.environ.get("RAY_AUTH_MODE"))
"""


def test_the_users_auth_variables_are_back_after_a_session():
    """In a fresh process (Ray reloads its auth settings around a session: not while the
    suite's own session runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_TOKEN_PATH"] = "/users/own/token"
    done = subprocess.run([sys.executable, "-c", RESTORE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["/users/own/token", "None", "None"]
