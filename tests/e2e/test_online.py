"""`rl-service online` end to end, through the real CLI as a subprocess, with simulated users
(rl_service/testing/simulated_users.py: the official `openai` client, preferences posted over
HTTP) asking and posting the whole time:

- versions advance: v1 is trained from the users' feedback, checked and served;
- an injected bad version (RL_SERVICE_FAULT=bad_version:2: v2, trained and checked, is published
  scrambled with a matching checksum, as a bad deploy would be) is rolled back to v1 by the live
  canary, automatically;
- no request fails while the service is up, swaps and the rollback included (no retries);
- the whole service tree is SIGKILLed at a random moment of the next round; the same command
  resumes: it serves the version it served (v1, from its own directory, under its number),
  every acknowledged preference is in the store, and it trains, checks and serves v3;
- the operator's rollback, pin and unpin work on the running service, and a bad version number
  is refused in one line (exit 2).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import openai

from rl_service.serving.feedback import FeedbackStore
from rl_service.testing.simulated_users import make_users
from tests.e2e.conftest import free_port
from tests.e2e.processes import CliProcess
from tests.integration.conftest import REPO

CONFIG = str(REPO / "configs" / "ci" / "online.yaml")


class Users(threading.Thread):
    """Simulated users in a loop until stopped: every outcome recorded with its time."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.users = make_users(3, noise=0.0, bias={}, seed=7)
        self.acked: list[tuple[float, str]] = []  # (time, feedback id) of every 200 on /v1/feedback
        self.failed: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=120)
        with httpx.Client() as http:
            while not self.halt.is_set():
                for user in self.users:
                    n_err = len(user.stats.errors)
                    try:
                        out = user.round(client, http, self.url, {})
                    except httpx.HTTPError as err:  # the feedback post itself failed to connect
                        out = None
                        user.stats.errors.append(f"feedback: {type(err).__name__}: {err}")
                    now = time.time()
                    self.failed += [(now, e) for e in user.stats.errors[n_err:]]
                    if out is not None:
                        self.acked.append((now, out["id"]))
                time.sleep(0.2)

    def failed_between(self, t0: float, t1: float) -> list[str]:
        return [e for t, e in self.failed if t0 <= t <= t1]


def _state(run_dir: Path) -> dict:
    path = run_dir / "online" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _wait(cond, what: str, proc: CliProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.proc.poll() is None, f"the service exited with {proc.proc.returncode}; see {proc.log_path}"
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s}s; see {proc.log_path}"
        time.sleep(0.5)


def _served_version(url: str) -> int:
    return int(httpx.get(f"{url}/v1/models", timeout=30).headers["x-policy-version"])


def test_online_service_learns_rolls_back_and_resumes_after_sigkill(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "feedback.sqlite"
    args = ["online", CONFIG, f"run_root={tmp_path}", f"serve.port={port}", f"serve.feedback_db={db}"]
    run_dir = tmp_path / "ci-online"
    env = {"RL_SERVICE_FAULT": "bad_version:2"}

    service = CliProcess(args, tmp_path / "service-1.log", env)
    users = None
    try:
        service.wait_for_output("online: serving v0", 300)
        up_since = time.time()
        users = Users(url)
        users.start()

        def versions() -> dict:
            return _state(run_dir).get("versions", {})

        _wait(lambda: versions().get("2", {}).get("status") == "rolled_back", "v2 rolled back", service, 900)
        st = _state(run_dir)
        assert st["serving"] == 1 and st["versions"]["1"]["status"] == "serving", st["versions"]
        assert st["versions"]["1"]["canary_agreement"] >= 0.75
        assert st["versions"]["2"]["canary_agreement"] < 0.75  # the scrambled weights answer otherwise
        assert any("rolled back" in p for p in st["versions"]["2"]["problems"])
        assert _served_version(url) == 1

        # SIGKILL at a random moment of the next round (refit or PPO)
        _wait(lambda: _state(run_dir).get("rounds", 0) >= 2 and (run_dir / "online/rounds/round-0003").exists(),
              "round 3 started", service, 600)  # fmt: skip
        time.sleep(random.uniform(0.0, 25.0))
        killed_at = time.time()
        service.kill9()
        assert not users.failed_between(up_since, killed_at - 1.0), users.failed_between(up_since, killed_at)
        acked = [fid for t, fid in users.acked if t < killed_at]
        served_before = _state(run_dir)["serving"]

        service = CliProcess(args, tmp_path / "service-2.log", env)
        service.wait_for_output("online: serving", 300)
        assert f"online: serving v{served_before} " in service.output()
        assert "resumed" in service.output()
        up_again = time.time()
        assert _served_version(url) == served_before
        store = FeedbackStore(str(db))
        try:
            ids = {r[0] for r in store._read("SELECT id FROM preferences")}
        finally:
            store.close()
        assert set(acked) <= ids, f"{len(set(acked) - ids)} acknowledged preferences lost"

        # the operator: a typo refused at once, then a rollback on the running service
        bad = CliProcess([*args, "--rollback", "99"], tmp_path / "op-bad.log")
        assert bad.proc.wait(60) == 2
        assert "error: no version 99" in bad.output()

        def v3_decided() -> bool:  # live-checked (then serving or rolled back), or refused before
            v3 = versions().get("3", {})
            return "canary_agreement" in v3 or v3.get("status") in ("refused", "failed")

        _wait(v3_decided, "v3 checked live", service, 600)
        assert versions()["3"]["status"] == "serving", versions()["3"]
        assert versions()["3"]["canary_agreement"] >= 0.75 and versions()["3"]["parent"] == 1
        assert _served_version(url) == 3
        op = CliProcess([*args, "--rollback"], tmp_path / "op.log")  # the version before: v1
        assert op.proc.wait(120) == 0, op.output()
        assert "rolled back v3 -> v1" in op.output()
        assert _served_version(url) == 1 and _state(run_dir)["versions"]["3"]["status"] == "rolled_back"
        pin = CliProcess([*args, "--pin", "1"], tmp_path / "pin.log")  # what is served: pinned, no swap
        assert pin.proc.wait(120) == 0 and "pinned v1" in pin.output(), pin.output()
        assert _state(run_dir)["pinned"] == 1

        def round_dirs() -> int:
            return len(list((run_dir / "online" / "rounds").iterdir()))

        # a round running when the pin came ends (its version refused); then none starts, although
        # the users post a round's worth of pairs every few seconds
        _wait(lambda: _state(run_dir)["rounds"] == round_dirs(), "the round in flight", service, 300)
        n = round_dirs()
        time.sleep(10)
        assert round_dirs() == n
        unpin = CliProcess([*args, "--unpin"], tmp_path / "unpin.log")
        assert unpin.proc.wait(120) == 0 and "unpinned" in unpin.output(), unpin.output()
        assert _state(run_dir)["pinned"] is None and _served_version(url) == 1
        assert not users.failed_between(up_again, time.time()), users.failed_between(up_again, time.time())

        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert {r.get("round") for r in rows} >= {1, 2, 3}
        assert any(r.get("online/rolled_back") for r in rows)
        assert all(isinstance(r.get("online/version_served"), int) for r in rows)
    finally:
        if users is not None:
            users.halt.set()
        if service.proc.poll() is None:
            assert service.terminate() == 0
