"""Operator requests to a running (or stopped) online service: `rl-service online CONFIG --pin V |
--unpin | --rollback [V]`.

    append(online_dir, op, version) -> id     the CLI: one fsynced line of online/operator.jsonl
    unapplied(online_dir, done)               the service: the lines after the `done` it applied
    refusal(state, version)                   why a version cannot be served (both sides check)
    apply(service, request) -> outcome        pin / unpin / rollback on the service

A request is a line of a file, not a call: one made while the service is down is applied when it
starts, and the outcome is recorded in state.json under the request's id (the CLI waits for it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

REQUESTS = "operator.jsonl"
NEVER_SERVED = ("refused", "failed", "candidate")


def append(online_dir: Path, op: str, version: int | None) -> str:
    rid = uuid.uuid4().hex[:12]
    line = json.dumps({"id": rid, "op": op, "version": version, "at": time.time()}) + "\n"
    with open(Path(online_dir) / REQUESTS, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return rid


def unapplied(online_dir: Path, done: int) -> list[dict]:
    path = Path(online_dir) / REQUESTS
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate([x for x in path.read_text().splitlines() if x.strip()][done:], done + 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a hand-edited or cut line: answered as an error, not replayed
            out.append({"id": f"line-{i}", "op": "unreadable", "version": None})
    return out


def refusal(state, version: int | None) -> str | None:
    if version is None:
        return None
    if str(version) not in state.versions:
        return f"no version {version} (have {', '.join(sorted(state.versions, key=int))})"
    status = state.version(version)["status"]
    if status in NEVER_SERVED:
        return f"v{version} is {status}: it was never served"
    return None


def apply(service, req: dict) -> str:
    st, op, v = service.state, req["op"], req.get("version")
    why = refusal(st, v)
    if why is not None:
        return f"error: {why}"
    if op == "unpin":
        st.pinned = None
        return f"unpinned; serving v{st.serving}, rounds resume"
    if op == "pin":
        if v != st.serving:
            service.rollback(v, "pinned by the operator")
        st.pinned = v
        return f"pinned v{v}: no rounds until --unpin"
    if op == "rollback":
        result = service.rollback(v, "by the operator")
        if st.pinned is not None:  # still pinned, now to what is served
            st.pinned = st.serving
        return result
    return f"error: unknown request {op!r}"
