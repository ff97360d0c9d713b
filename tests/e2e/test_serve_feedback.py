"""Feedback durability through the real CLI: `python -m rl_service.cli serve` as a
subprocess, acknowledged feedback writes, kill -9 of the server and every process under it
(driver, raylet, GCS, proxy, replica), restart on the same database, all rows present;
then `feedback export` writes {prompt, chosen, rejected} lines.

Run twice: on the default SQLite file (also the no-key, default-bind case), and on a real
PostgreSQL 16 server (`serve.feedback_dsn`) started for the test from the binaries of the
`postgres` extra (pgserver's wheel) on 127.0.0.1, data in a temp dir. PostgreSQL
refuses to run as root, so as root the server runs as `nobody`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.e2e.conftest import free_port
from tests.e2e.processes import CliProcess, alive, kill9_list
from tests.integration.conftest import REPO

KEY = "durable-key"


class ServerProcess(CliProcess):
    """`rl-service serve` in its own session; killed by PID (with its descendants) at the end."""

    def __init__(self, model_dir: Path, cfg_path: Path, log_path: Path, api_key: str | None = KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key = ["--api-key", api_key] if api_key else []
        args = ["serve", "--checkpoint", str(model_dir), "--port", str(self.port), *key, "--config", str(cfg_path)]
        super().__init__(args, log_path)

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}; see {self.log.name}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s}s; see {self.log.name}")

    kill9_list = staticmethod(kill9_list)


_alive = alive


class PostgresProcess:
    """A throwaway PostgreSQL server: initdb + postgres on 127.0.0.1:<free port>, trust auth."""

    def __init__(self):
        # `make install` installs the postgres extra: a missing package fails here, never skips.
        import pgserver
        import psycopg  # noqa: F401

        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        # Under the repo's .tmp (pytest's own temp dirs are 0700: `nobody` could not enter them).
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir=REPO / ".tmp"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.data.mkdir()
        run_as = {}
        if os.geteuid() == 0:
            os.chown(self.data, 65534, 65534)
            run_as = {"user": "nobody", "group": 65534, "extra_groups": []}
        subprocess.run(
            [bin_dir / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
            **run_as,
        )
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/feedback"
        self.log = open(self.root / "postgres.log", "ab")
        self.bin_dir, self.run_as = bin_dir, run_as
        self.start()
        self._admin("CREATE DATABASE feedback")

    def start(self) -> None:
        """(Re)start the server on the same data directory and port."""
        # fsync stays on (the default): a commit is acknowledged once it is durable.
        self.proc = subprocess.Popen(
            [self.bin_dir / "postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port), "-k", self.data],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self.run_as,
        )
        self._admin("SELECT 1")

    def shutdown(self) -> None:
        """Stop the server ("fast": open connections are cut), keeping its data."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill9(self) -> None:
        """SIGKILL the postmaster and every backend at once (its own session: one process group):
        no shutdown checkpoint, shared buffers and unwritten WAL gone; the next start recovers."""
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs(procs, timeout=10)

    def _admin(self, sql: str, timeout_s: float = 60) -> None:
        """Run `sql` on the maintenance database once the server accepts connections."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"postgres exited; see {self.root / 'postgres.log'}"
            try:
                with psycopg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
                    conn.execute(sql)
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def cut_connections(self) -> int:
        """Terminate every other session on the feedback database (what a failover does to clients)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return len(
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'feedback' AND pid <> pg_backend_pid()"
                ).fetchall()
            )

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.shutdown()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    server = PostgresProcess()
    yield server
    server.stop()


@pytest.fixture
def servers():
    started: list[ServerProcess] = []
    yield started
    for s in started:  # whatever the test did, nothing it started outlives it
        s.kill9_list(s.tree())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_feedback_survives_kill9_and_exports(backend, servers, tiny_model_dir, tmp_path, request):
    """On SQLite the server runs as `rl-service serve` does with no --host and no key: its HTTP
    socket must listen on 127.0.0.1 only (read from the process table, not assumed from the
    config) and requests without a key are served. On PostgreSQL it runs with a key."""
    db = tmp_path / "feedback.sqlite"
    cfg = tmp_path / "serve.yaml"
    pg = request.getfixturevalue("postgres") if backend == "postgres" else None
    key = KEY if pg else None
    dsn = f"  feedback_dsn: {pg.dsn}\n" if pg else ""
    cfg.write_text(f"serve:\n  engine: hf\n  feedback_db: {db}\n{dsn}ray:\n  num_cpus: 2\n")

    def rows(sql: str, args: tuple = ()) -> list[tuple]:
        if pg:
            return pg.rows(sql, args)
        with sqlite3.connect(db) as conn:
            return conn.execute(sql, args).fetchall()

    servers.append(ServerProcess(tiny_model_dir, cfg, tmp_path / "server1.log", api_key=key))
    s1 = servers[-1]
    s1.wait_ready()
    if key is None:  # the default bind, the no-key mode
        listening = {
            c.laddr.ip
            for p in s1.tree()
            for c in _connections(p)
            if c.status == psutil.CONN_LISTEN and c.laddr.port == s1.port
        }
        assert listening == {"127.0.0.1"}, listening
    client = openai.OpenAI(base_url=f"{s1.url}/v1", api_key=key or "none", max_retries=0)
    auth = {"Authorization": f"Bearer {key}"} if key else {}  # no key: no Authorization header at all
    resp = client.completions.create(model="policy", prompt="3+4=", n=3, max_tokens=6, temperature=1.0, seed=3)
    texts = [c.text for c in resp.choices]
    ratings = [1.0, 0.0, 0.5]
    acked = {"ratings": [], "preferences": []}
    for i, rating in enumerate(ratings):
        r = httpx.post(
            f"{s1.url}/v1/feedback", headers=auth, json={"completion_id": resp.id, "choice_index": i, "rating": rating}
        )
        assert r.status_code == 200 and r.json()["stored"] is True
        acked["ratings"].append(r.json()["id"])
    prefs = [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 1)} for a in range(5)]
    for p in prefs:
        r = httpx.post(f"{s1.url}/v1/feedback", headers=auth, json=p)
        assert r.status_code == 200
        acked["preferences"].append(r.json()["id"])
    s1.kill9()  # right after the last acknowledgement
    assert not any(_alive(p) for p in s1.tree())

    servers.append(ServerProcess(tiny_model_dir, cfg, tmp_path / "server2.log", api_key=key))
    s2 = servers[-1]
    s2.wait_ready()
    # The restarted server finds the completion stored by the killed one.
    r = httpx.post(f"{s2.url}/v1/feedback", headers=auth, json={"completion_id": resp.id, "rating": 0.25})
    assert r.status_code == 200
    if pg:
        # The database goes away under the running server: feedback is refused with a 503
        # envelope (nothing stored), and accepted again once the database is back.
        pg.shutdown()
        r = httpx.post(f"{s2.url}/v1/feedback", headers=auth, json={"completion_id": resp.id, "rating": 0.75})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
        assert "\n" not in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
        # the driver's error (host, port, user of the DSN) is for the server log, not the client
        assert all(part not in r.text for part in (str(pg.port), "127.0.0.1", "postgres")), r.text
        pg.start()
        r = httpx.post(f"{s2.url}/v1/feedback", headers=auth, json={"completion_id": resp.id, "rating": 0.75})
        assert r.status_code == 200, r.text
        acked["ratings"].append(r.json()["id"])
    assert s2.terminate() == 0  # SIGTERM: clean shutdown, exit 0

    stored_ratings = {row[0] for row in rows("SELECT id FROM ratings")}
    stored_prefs = {row[0] for row in rows("SELECT id FROM preferences")}
    completions = rows(
        "SELECT choice_index, completion, policy_version FROM completions WHERE id = ? ORDER BY choice_index",
        (resp.id,),
    )
    assert set(acked["ratings"]) <= stored_ratings and len(stored_ratings) == 4 + (pg is not None)
    assert stored_prefs == set(acked["preferences"])
    assert [(i, t, 0) for i, t in enumerate(texts)] == completions
    assert db.exists() == (backend == "sqlite")  # with a DSN, nothing went to the SQLite file

    out = tmp_path / "prefs.jsonl"
    source = ["--config", str(cfg)] if pg else ["--db", str(db)]  # export reads serve.feedback_dsn
    done = subprocess.run(
        [sys.executable, "-m", "rl_service.cli", "feedback", "export", "--out", str(out), *source],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(line) == {"prompt", "chosen", "rejected"} for line in lines)
    assert lines[: len(prefs)] == prefs
    # Rated choices of one prompt become pairs (choice 0 averages 1.0 and 0.25 -> 0.625;
    # with PostgreSQL also 0.75 -> 0.667).
    means = [0.625 if pg is None else 2.0 / 3.0, 0.0, 0.5]
    expected = {
        (texts[i] if means[i] > means[j] else texts[j], texts[j] if means[i] > means[j] else texts[i])
        for i in range(3)
        for j in range(i + 1, 3)
        if texts[i] != texts[j]
    }
    assert {(line["chosen"], line["rejected"]) for line in lines[len(prefs) :]} == expected


def test_postgres_store_reconnects_after_a_dropped_connection(postgres) -> None:
    """The store's connection is cut by the server (as in a failover): the next call reconnects
    and succeeds; a write whose row is already there (its commit's acknowledgement was lost)
    counts as done without a duplicate; while the server is down calls raise StoreUnavailable
    (one line) and the store recovers when it is back."""
    from rl_service.serving.feedback import FeedbackStore, StoreUnavailable

    store = FeedbackStore(dsn=postgres.dsn)
    try:
        store.add_preference("p1", "1+1=", "2", "3", None)
        assert postgres.cut_connections() == 1
        store.add_preference("p2", "2+2=", "4", "5", None)  # reconnects
        assert store.counts()["preferences"] == 2
        # p3 committed by someone else's connection: the store's retry after a cut must not fail on it.
        import psycopg

        with psycopg.connect(postgres.dsn) as conn:
            conn.execute("INSERT INTO preferences VALUES ('p3', '3+3=', '6', '7', NULL, 0)")
        postgres.cut_connections()
        store.add_preference("p3", "3+3=", "6", "7", None)
        postgres.shutdown()
        with pytest.raises(StoreUnavailable, match="feedback database unreachable") as err:
            store.add_preference("p4", "4+4=", "8", "9", None)
        assert "\n" not in str(err.value)
        postgres.start()
        store.add_preference("p4", "4+4=", "8", "9", None)
        assert [r[0] for r in postgres.rows("SELECT id FROM preferences ORDER BY id")] == ["p1", "p2", "p3", "p4"]
    finally:
        store.close()


def test_postgres_sigkilled_after_acknowledged_writes_keeps_every_row(postgres) -> None:
    """Every write the store acknowledged survives a SIGKILL of the whole PostgreSQL server taken
    right after the last acknowledgement: a commit returns only once its WAL is flushed
    (`synchronous_commit=on`; with it off, the last ~200 ms of commits die in the WAL buffers)."""
    from rl_service.serving.feedback import FeedbackStore

    store = FeedbackStore(dsn=postgres.dsn)
    acked = []
    try:
        for i in range(200):
            store.add_preference(f"p{i:03d}", f"{i}+{i}=", str(2 * i), str(2 * i + 1), None)
            acked.append(f"p{i:03d}")
        store.add_rating("r0", "cmpl-x", 0, 0.5, None)
        postgres.kill9()
    finally:
        store.close()
    postgres.start()
    assert [r[0] for r in postgres.rows("SELECT id FROM preferences ORDER BY id")] == acked
    assert postgres.rows("SELECT id, rating FROM ratings") == [("r0", 0.5)]
    assert "database system was interrupted" in (postgres.root / "postgres.log").read_text()  # a real crash recovery


def _connections(p: psutil.Process) -> list:
    try:
        return p.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
