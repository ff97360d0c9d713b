"""A disk that fills up, for real: a size-limited tmpfs mounted for the test (this machine's suite
runs as root; without mount rights the test fails, it does not skip). The disk fills during a
checkpoint (before the shards are all written, and after them while the commit writes its
controller state and manifest) and during a metrics / summary write; the previous checkpoint is
the one resume uses, nothing half-written is taken for complete, and writes work again once
space is freed."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from rl_service.controller import checkpoint
from rl_service.infra.files import read_jsonl, write_atomic

SIZE = 256 * 1024


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    assert os.geteuid() == 0, "mounting a tmpfs needs root (the suite runs as root on this machine)"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk, leave: int) -> os.PathLike:
    """A ballast file that leaves about `leave` bytes free on `disk` (tmpfs counts 4 KiB pages)."""
    ballast = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with ballast.open("ab") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return ballast


def _shards(tmp, payload: bytes) -> None:
    (tmp / "learner").mkdir()
    (tmp / "learner" / "data.bin").write_bytes(payload)


@pytest.mark.parametrize("where", ["shards", "commit"])
def test_a_checkpoint_cut_by_a_full_disk_leaves_the_previous_one_for_resume(small_disk, where):
    run_dir = small_disk / "run"
    root = run_dir / "checkpoints"
    tmp = checkpoint.begin(root, 1)
    _shards(tmp, b"a" * 1000)
    checkpoint.commit(root, tmp, 1, {"step": 1}, keep_last=3)
    shard = b"b" * 20_000
    ballast = _fill(small_disk, leave=4096 if where == "shards" else 20_480)  # commit: the shard fits, no more
    with pytest.raises(OSError) as err:
        tmp = checkpoint.begin(root, 2)
        _shards(tmp, shard)
        checkpoint.commit(root, tmp, 2, {"step": 2, "pad": "x" * 8192}, keep_last=3)
    assert err.value.errno == errno.ENOSPC
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step-000001"]
    assert checkpoint.verified_latest(root).name == "step-000001"
    assert checkpoint.resolve_resume("auto", run_dir).name == "step-000001"
    assert checkpoint.load_controller_state(root / "step-000001") == {"step": 1}
    # space back: the next checkpoint commits and the cut one's leftovers go
    ballast.unlink()
    tmp = checkpoint.begin(root, 2)
    _shards(tmp, shard)
    checkpoint.commit(root, tmp, 2, {"step": 2}, keep_last=3)
    assert checkpoint.verified_latest(root).name == "step-000002"
    assert not list(root.glob(".tmp-*"))


def test_metrics_and_summary_writes_on_a_full_disk_lose_nothing_acknowledged(small_disk):
    summary, metrics = small_disk / "summary.json", small_disk / "metrics.jsonl"
    write_atomic(summary, json.dumps({"step": 1}))
    with metrics.open("a") as fh:
        fh.write(json.dumps({"step": 1}) + "\n")
    ballast = _fill(small_disk, leave=0)
    with pytest.raises(OSError):
        write_atomic(summary, json.dumps({"step": 2, "pad": "x" * 10_000}))
    assert json.loads(summary.read_text()) == {"step": 1}, "the old summary is intact"
    assert [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")] == [], "no temp file left"
    with pytest.raises(OSError), metrics.open("a") as fh:  # an append cut short by the full disk
        fh.write(json.dumps({"step": 2, "pad": "y" * 10_000}) + "\n")
    rows, torn = read_jsonl(metrics)
    assert [r["step"] for r in rows] == [1] and torn in (0, 1)
    ballast.unlink()
    write_atomic(summary, json.dumps({"step": 2}))
    assert json.loads(summary.read_text()) == {"step": 2}
