"""An fsync audit from the system calls themselves: a child process commits a checkpoint, or
acknowledges a feedback write, under `strace -f -y` (every fd printed with its path), and the
trace is read back in order. Durable means: every byte written to a file is fsynced before the
step that makes it visible (the checkpoint's rename, the acknowledgement), and every rename or
new name is followed by an fsync of its directory before that step. A kill -9 cannot tell a
missing fsync apart (the page cache outlives the process); this can.

Needs strace (the image has it; a machine without it skips these, saying so)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Call:
    i: int
    call: str
    path: str | None
    """The fd's path (write, fsync) or the first quoted path (rename: `src`)."""
    dst: str | None = None
    data: str = ""


def trace(tmp_path: Path, script: str, *args: str) -> list[Call]:
    """Run `script` in a fresh Python under strace; the successful calls, in order."""
    out = tmp_path / "trace.txt"
    calls = "write,pwrite64,writev,pwritev,fsync,fdatasync,rename,renameat,renameat2"
    done = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-s", "16", "-e", f"trace={calls}", "-o", str(out), sys.executable, "-c", script]
        + list(args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = []
    for line in out.read_text().splitlines():
        m = _LINE.match(line)
        if not m or int(m["ret"]) < 0:
            continue
        a = m["args"]
        if m["call"].startswith("rename"):
            paths = _QUOTED.findall(a)
            parsed.append(Call(len(parsed), "rename", paths[0], paths[1]))
        else:
            fd = _FD_PATH.match(a)
            quoted = _QUOTED.findall(a)
            kind = "fsync" if m["call"] in ("fsync", "fdatasync") else "write"
            parsed.append(Call(len(parsed), kind, fd["path"] if fd else None, data=quoted[0] if quoted else ""))
    return parsed


def ack_index(calls: list[Call], marker: str) -> int:
    (i,) = [c.i for c in calls if c.call == "write" and c.data.startswith(marker)]
    return i


def synced_between(calls: list[Call], path: str, after: int, before: int) -> bool:
    return any(c.call == "fsync" and c.path == path and after < c.i < before for c in calls)


def last_write(calls: list[Call], path: str, before: int) -> int:
    return max((c.i for c in calls if c.call == "write" and c.path == path and c.i < before), default=-1)


CHECKPOINT = r"""
import os, sys
from pathlib import Path
from rl_service.controller import checkpoint
root = Path(sys.argv[1])
tmp = checkpoint.begin(root, 3)
# the learners' parts, written the way any process would (no fsync of their own)
(tmp / "learner").mkdir()
for r in range(2):
    (tmp / "learner" / f"learner_rank{r}.pt").write_bytes(os.urandom(70000))
(tmp / "learner" / "dcp").mkdir()
(tmp / "learner" / "dcp" / "__0_0.distcp").write_bytes(os.urandom(5000))
os.write(1, b"BEGIN\n")
checkpoint.commit(root, tmp, 3, {"step": 3, "stream": {"epoch": 0}}, keep_last=2)
os.write(1, b"COMMITTED\n")
"""


def test_a_committed_checkpoint_is_durable_before_commit_returns(tmp_path):
    root = (tmp_path / "checkpoints").resolve()
    calls = trace(tmp_path, CHECKPOINT, str(root))
    begin, acked = ack_index(calls, "BEGIN"), ack_index(calls, "COMMITTED")
    tmp, final = str(root / ".tmp-step-000003"), str(root / "step-000003")
    (commit_rename,) = [c for c in calls if c.call == "rename" and c.path == tmp and c.dst == final]
    files = sorted(str(p.relative_to(final)) for p in Path(final).rglob("*") if p.is_file())
    assert {"learner/learner_rank0.pt", "controller.json", "manifest.json"} <= set(files), files
    for rel in [f for f in files if f != "manifest.json"]:  # its last byte fsynced before the rename
        path = f"{tmp}/{rel}"
        wrote = last_write(calls, path, commit_rename.i)
        assert wrote > -1, f"no write of {rel} seen: the trace is not what it seems"
        assert synced_between(calls, path, wrote, commit_rename.i), f"{rel} renamed into place without an fsync"
    # the manifest is written under a temp name: that file fsynced, then renamed, before the commit
    (manifest_rename,) = [c for c in calls if c.call == "rename" and c.dst == f"{tmp}/manifest.json"]
    m_wrote = last_write(calls, manifest_rename.path, manifest_rename.i)
    assert m_wrote > begin and synced_between(calls, manifest_rename.path, m_wrote, manifest_rename.i)
    assert manifest_rename.i < commit_rename.i
    for d in [tmp, f"{tmp}/learner", f"{tmp}/learner/dcp"]:  # entries of every directory made durable
        assert synced_between(calls, d, begin, commit_rename.i), f"directory {d} not fsynced before the rename"
    # the rename itself (an entry of root), and `latest`, durable before commit returns
    (latest,) = [c for c in calls if c.call == "rename" and c.dst == str(root / "latest")]
    assert commit_rename.i < latest.i < acked
    # ordered: the checkpoint's own entry durable before `latest` may name it
    assert synced_between(calls, str(root), commit_rename.i, latest.i), "the checkpoint's rename is not fsynced"
    assert synced_between(calls, latest.path, last_write(calls, latest.path, latest.i), latest.i)
    assert synced_between(calls, str(root), latest.i, acked), "`latest` is replaced without an fsync of its directory"


FEEDBACK = r"""
import os, sys
from rl_service.serving.feedback import FeedbackStore
store = FeedbackStore(db_path=sys.argv[1])
os.write(1, b"OPEN\n")
for i in range(3):
    store.add_preference(f"p{i}", f"{i}+{i}=", str(2 * i), str(2 * i + 1), None)
    os.write(1, f"ACK{i}\n".encode())
store.add_rating("r0", "cmpl-x", 0, 0.5, None)
os.write(1, b"ACKR\n")
store.close()
"""


def test_an_acknowledged_feedback_write_is_fsynced_before_the_acknowledgement(tmp_path):
    db = (tmp_path / "feedback.sqlite").resolve()
    calls = trace(tmp_path, FEEDBACK, str(db))
    wal = f"{db}-wal"
    prev = ack_index(calls, "OPEN")
    for marker in ("ACK0", "ACK1", "ACK2", "ACKR"):
        acked = ack_index(calls, marker)
        wrote = last_write(calls, wal, acked)
        assert wrote > prev, f"{marker}: the write never reached the WAL before it was acknowledged"
        assert synced_between(calls, wal, wrote, acked), f"{marker}: acknowledged before its WAL frames were fsynced"
        prev = acked


ATOMIC = r"""
import os, sys
from pathlib import Path
from rl_service.infra.files import write_atomic
write_atomic(Path(sys.argv[1]), '{"steps": 3}')
os.write(1, b"DONE\n")
"""


def test_write_atomic_is_durable_when_it_returns(tmp_path):
    """summary.json, `latest`, the resume's log rewrites and the feedback export go through it."""
    path = (tmp_path / "summary.json").resolve()
    calls = trace(tmp_path, ATOMIC, str(path))
    done = ack_index(calls, "DONE")
    (ren,) = [c for c in calls if c.call == "rename" and c.dst == str(path)]
    assert synced_between(calls, ren.path, last_write(calls, ren.path, ren.i), ren.i), "renamed before its fsync"
    assert synced_between(calls, str(tmp_path.resolve()), ren.i, done), "the rename is not made durable"
