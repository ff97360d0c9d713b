"""Durable store of served completions and human feedback; preference export.

SQLite by default (WAL journal, `synchronous=FULL`: a write returns only after the commit
is on disk, so an acknowledged row survives a kill -9 or a power cut); PostgreSQL when a
DSN is given (`pip install rl_service[postgres]`: psycopg, imported only then; a commit
returns once the server has it durably, with its default `synchronous_commit=on`). Several
replicas may open the same SQLite file (WAL: one writer at a time, `busy_timeout` makes the
others wait) or the same PostgreSQL database. Times and ratings are DOUBLE PRECISION: a
PostgreSQL REAL is 4 bytes, too coarse for a Unix time.

A dropped PostgreSQL connection (server restart, failover, an idle-connection reaper) is
re-opened on the next call, which is retried once; a write retried after a commit whose
acknowledgement was lost finds its row already there (same primary key) and counts as done.
When the database stays unreachable the call raises StoreUnavailable (the endpoint answers
503) and the next call tries again; nothing acknowledged is lost.

Tables:
    completions(id, choice_index, created, kind, model, policy_version, prompt, completion, finish_reason)
    ratings(id, completion_id, choice_index, rating, comment, created, annotator)
    preferences(id, prompt, chosen, rejected, comment, created, annotator)

`annotator` (who gave the label; NULL when the client named nobody) was added after the first
release: a database made before it gets the column when a store opens it (`ALTER TABLE ... ADD
COLUMN`, its old rows NULL).

Export (`export_preferences`) writes one JSON line `{prompt, chosen, rejected}` per explicit
preference (with its `annotator` when there is one: preference.noise=annotators reads it),
plus one per pair of rated completions of the same prompt with different mean ratings (the
higher-rated one is `chosen`; no annotator: a mean may mix several).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path

from rl_service.infra.files import write_atomic

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS completions (
        id TEXT NOT NULL, choice_index INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL, model TEXT NOT NULL, policy_version INTEGER NOT NULL, prompt TEXT NOT NULL,
        completion TEXT NOT NULL, finish_reason TEXT NOT NULL, PRIMARY KEY (id, choice_index))""",
    """CREATE TABLE IF NOT EXISTS ratings (
        id TEXT PRIMARY KEY, completion_id TEXT NOT NULL, choice_index INTEGER NOT NULL,
        rating DOUBLE PRECISION NOT NULL, comment TEXT, created DOUBLE PRECISION NOT NULL, annotator TEXT)""",
    """CREATE TABLE IF NOT EXISTS preferences (
        id TEXT PRIMARY KEY, prompt TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL,
        comment TEXT, created DOUBLE PRECISION NOT NULL, annotator TEXT)""",
]
ADDED_COLUMNS = [("ratings", "annotator", "TEXT"), ("preferences", "annotator", "TEXT")]
"""Columns newer than a table's first release: added to an older database when it is opened."""


class StoreUnavailable(RuntimeError):
    """The database could not be reached (after one reconnect); nothing was written."""


class FeedbackStore:
    """Thread-safe: one connection guarded by a lock (writes are tiny; fsync dominates)."""

    def __init__(self, db_path: str | None = None, dsn: str | None = None):
        self._lock = threading.Lock()
        self._dsn = dsn
        if dsn:
            self._conn = self._connect()
            self._ph = "%s"
        else:
            path = Path(db_path or "runs/feedback.sqlite")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._ph = "?"
        with self._lock:
            for stmt in SCHEMA:
                self._conn.execute(stmt)
            self._conn.commit()
            self._add_new_columns()

    def _add_new_columns(self) -> None:
        """ADDED_COLUMNS missing from an older database: added (existing rows get NULL)."""
        for table, column, kind in ADDED_COLUMNS:
            cur = self._conn.cursor()
            cur.execute(f"SELECT * FROM {table} LIMIT 0")
            if column not in [d[0] for d in cur.description]:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._conn.commit()

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """Insert and commit; returns only once the transaction is durable."""
        sql = sql.replace("?", self._ph)
        with self._lock:
            self._run(
                lambda: self._insert(sql, rows), retry=lambda: self._insert(sql + " ON CONFLICT DO NOTHING", rows)
            )

    def _insert(self, sql: str, rows: list[tuple]) -> None:
        cur = self._conn.cursor()
        try:
            cur.executemany(sql, rows)
            self._conn.commit()
        except BaseException:
            if not self._connection_lost():
                self._conn.rollback()
            raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        def select() -> list[tuple]:
            cur = self._conn.cursor()
            try:
                cur.execute(sql.replace("?", self._ph), args)
                return list(cur.fetchall())
            finally:
                if not self._connection_lost():
                    self._conn.rollback()  # end the read transaction psycopg opened (no-op for SQLite)

        with self._lock:
            return self._run(select, retry=select)

    def _connect(self):
        import psycopg  # optional dependency, only for PostgreSQL

        return psycopg.connect(self._dsn, connect_timeout=10)

    def _run(self, op, retry):
        """op(); if the PostgreSQL connection is (or turns out) lost, reconnect and retry() once.
        Called with the lock held."""
        if self._dsn is None:
            return op()
        import psycopg

        if not self._connection_lost():
            try:
                return op()
            except psycopg.OperationalError:
                if not self._connection_lost():
                    raise  # the connection is fine: a real error of this statement
        self._conn.close()
        try:
            self._conn = self._connect()
            return retry()
        except psycopg.OperationalError as err:
            raise StoreUnavailable(f"feedback database unreachable: {_one_line(err)}") from err

    def _connection_lost(self) -> bool:
        return self._dsn is not None and (self._conn.closed or self._conn.broken)

    def record_completion(
        self, rid: str, kind: str, model: str, version: int, prompts: list[str], choices: list[tuple[str, str]]
    ) -> None:
        """One row per choice; `prompts[i]` is the prompt of choice i."""
        now = time.time()
        self._write(
            "INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (rid, i, now, kind, model, version, p, text, finish)
                for i, (p, (text, finish)) in enumerate(zip(prompts, choices))
            ],
        )

    def has_completion(self, rid: str, choice_index: int) -> bool:
        return bool(self._read("SELECT 1 FROM completions WHERE id = ? AND choice_index = ?", (rid, choice_index)))

    def add_rating(
        self,
        fid: str,
        completion_id: str,
        choice_index: int,
        rating: float,
        comment: str | None,
        annotator: str | None = None,
    ) -> None:
        if not math.isfinite(rating):  # the endpoint refuses these first; no caller may store one
            raise ValueError(f"rating must be finite (got {rating})")
        self._write(
            "INSERT INTO ratings (id, completion_id, choice_index, rating, comment, created, annotator) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(fid, completion_id, choice_index, float(rating), comment, time.time(), annotator)],
        )

    def add_preference(
        self, fid: str, prompt: str, chosen: str, rejected: str, comment: str | None, annotator: str | None = None
    ) -> None:
        self._write(
            "INSERT INTO preferences (id, prompt, chosen, rejected, comment, created, annotator) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(fid, prompt, chosen, rejected, comment, time.time(), annotator)],
        )

    def counts(self) -> dict[str, int]:
        return {t: self._read(f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("completions", "ratings", "preferences")}

    def prompts(self) -> list[str]:
        """Every distinct prompt users asked (completions) or compared (preferences), first seen first."""
        rows = self._read(
            "SELECT prompt, MIN(created) AS t FROM (SELECT prompt, created FROM completions "
            "UNION ALL SELECT prompt, created FROM preferences) AS asked GROUP BY prompt ORDER BY t, prompt"
        )
        return [prompt for prompt, _ in rows]

    def rated_completions(self) -> list[tuple[str, str, float]]:
        """(prompt, completion, mean rating) of every rated completion, first rated first."""
        return self._read(
            "SELECT c.prompt, c.completion, AVG(r.rating) FROM ratings r JOIN completions c "
            "ON c.id = r.completion_id AND c.choice_index = r.choice_index "
            "GROUP BY r.completion_id, r.choice_index, c.prompt, c.completion ORDER BY MIN(r.created)"
        )

    def preference_pairs(self) -> list[dict[str, str]]:
        pairs = [
            {"prompt": p, "chosen": c, "rejected": r, **({"annotator": a} if a is not None else {})}
            for p, c, r, a in self._read(
                "SELECT prompt, chosen, rejected, annotator FROM preferences ORDER BY created, id"
            )
        ]
        rated = self.rated_completions()
        by_prompt: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for prompt, text, score in rated:
            by_prompt[prompt].append((text, score))
        for prompt, items in by_prompt.items():
            for i, (a, sa) in enumerate(items):
                for b, sb in items[i + 1 :]:
                    if sa != sb and a != b:
                        chosen, rejected = (a, b) if sa > sb else (b, a)
                        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return pairs

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def export_preferences(store: FeedbackStore, out: str | Path) -> int:
    """Write the preference dataset as JSON lines (atomically); returns the number of pairs."""
    pairs = store.preference_pairs()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(json.dumps(p) + "\n" for p in pairs))
    return len(pairs)
