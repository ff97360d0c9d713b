"""Files a resume or an export reads back, written so that a crash leaves the old or the new one.

    write_atomic(path, text)   temp file in the same dir, fsync, rename over `path`, fsync the dir
    read_jsonl(path)           rows of a JSON-lines log; a torn last line (a kill or a full disk
                               mid-append) is dropped and counted, a bad line elsewhere is an error

Plain Python, no Ray: the driver, the CLI and the serving replicas all use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """A reader sees the old file or the whole new one, never a torn one, also after a power cut.
    The temp file is removed if the write fails (a full disk leaves the old file as it was)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(rows, torn): the objects of a JSON-lines file, and 1 if its last line was cut short (no
    newline and not valid JSON: an append that did not finish), else 0. A line that does not
    parse anywhere else is damage, not a torn append: ValueError naming the file and line."""
    text = Path(path).read_text(errors="replace")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))  # complete, only its newline missing
        except ValueError:
            return rows, 1
    return rows, 0
