"""Durable files: atomic replacement that survives a failed write, and JSON-lines logs whose torn
last line (a kill mid-append) a resume drops and counts instead of failing on."""

from __future__ import annotations

import errno
import json
import os

import pytest

from rl_service.infra.files import read_jsonl, write_atomic
from rl_service.tracking.run import truncate_logs


def test_a_failed_replacement_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, '{"old": 1}')
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, '{"new": 2}')
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_torn_last_line_is_dropped_and_counted_damage_elsewhere_is_an_error(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert read_jsonl(log) == ([{"step": 1}, {"step": 2}], 1)
    log.write_text('{"step": 1}\n{"step": 2}')  # whole, only the newline missing: kept
    assert read_jsonl(log) == ([{"step": 1}, {"step": 2}], 0)
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not JSON"):
        read_jsonl(log)


def test_resume_truncation_survives_a_torn_line_in_both_logs(tmp_path):
    rows = [{"step": s, "reward/mean": 0.1 * s} for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "rew')
    (tmp_path / "consumed.jsonl").write_text('{"step": 1, "batch_ids": [0]}\n{"step": 2, "batch_')
    assert truncate_logs(tmp_path, last_step=2) == 2
    assert read_jsonl(tmp_path / "metrics.jsonl") == (rows[:2], 0)
    assert read_jsonl(tmp_path / "consumed.jsonl") == ([{"step": 1, "batch_ids": [0]}], 0)
    assert truncate_logs(tmp_path, last_step=2) == 0  # a second resume finds clean files
