"""Read a dataset task's rows from a local file and check each one; no tokenizer, no torch.

    rows = read_rows("data/train.jsonl")          # list[dict], one per row, read with HF `datasets`
    prompt = row_prompt(rows[2], cfg, where)      # RowPrompt: the prompt (string or messages), response

Formats by suffix: `.jsonl` / `.json` (the `json` loader), `.parquet`, `.csv`. Every problem is a
DataError of one line naming the file and the 1-based row (the JSONL line, the CSV data row),
raised before Ray starts: the CLI exits 2 and nothing is written.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_service.config import ConfigError, DatasetConfig

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
"""File suffix -> the HF `datasets` local-file loader that reads it."""
ROLES = ("system", "user", "assistant", "tool")
RESERVED_FIELDS = ("prompt", "completion")
"""Positional arguments of a reward function: a metadata field of that name would collide."""


class DataError(ConfigError):
    """A dataset file or row is unusable; the message names the file and the row (exit 2)."""


@dataclass(frozen=True)
class RowPrompt:
    """What a row asks: a string prompt or a list of chat messages, and its SFT target if any."""

    text: str | None
    """The prompt as a string (the `prompt_key` field), or None for messages."""
    messages: tuple[dict[str, str], ...] | None
    """The prompt turns (`messages_key`, without a trailing assistant turn), or None."""
    response: str | None
    """SFT target: the `response_key` field, or the trailing assistant turn of messages."""
    metadata: dict[str, Any]
    """Every field of the row but the prompt's: keyword arguments of the reward function."""
    where: str = ""
    """`file: row N`, for errors found later (no SFT target, a missing chat template)."""


def read_rows(path: str) -> list[dict[str, Any]]:
    """All rows of a local data file as dicts (column -> value), in file order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    loader = FORMATS.get(p.suffix.lower())
    if loader is None:
        known = ", ".join(FORMATS)
        raise DataError(f"{path}: unknown format {p.suffix or '(no suffix)'!r} (expected one of {known})")
    if p.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no rows)")
    if loader in ("json", "csv"):
        _check_utf8(p, header_lines=1 if loader == "csv" else 0)
    rows = _load(p, loader)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _load(p: Path, loader: str) -> list[dict[str, Any]]:
    import datasets  # a second of import: only when a dataset task is used

    datasets.disable_progress_bars()
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its own error log would repeat the exception we report
    try:
        # A throwaway cache: the files are small next to the models, and a stale Arrow cache of an
        # edited file must never be read back.
        with tempfile.TemporaryDirectory(prefix="rl-service-data-") as cache:
            ds = datasets.load_dataset(loader, data_files=str(p), split="train", cache_dir=cache)
            return ds.to_list()
    except Exception as err:  # noqa: BLE001 - any reader failure is a data problem
        if loader == "json" and p.suffix.lower() == ".jsonl":
            _raise_bad_json_line(p)
        cause = err.__cause__ or err
        raise DataError(f"{p}: cannot read as {loader}: {_first_line(cause)}") from None
    finally:
        quiet.setLevel(level)


def _check_utf8(p: Path, header_lines: int) -> None:
    raw = p.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{p}: row {line - header_lines}: not valid UTF-8 text (byte {err.start})") from None


def _raise_bad_json_line(p: Path) -> None:
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{p}: row {n}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{p}: row {n}: expected a JSON object, got {type(value).__name__}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def row_prompt(row: dict[str, Any], cfg: DatasetConfig, where: str) -> RowPrompt:
    """The prompt, SFT target and metadata of one row; `where` is `file: row N` for errors."""
    text = messages = response = None
    if row.get(cfg.prompt_key) is not None:
        used = cfg.prompt_key
        text = _string(row, used, where)
        if row.get(cfg.response_key) is not None:
            response = _string(row, cfg.response_key, where, empty_ok=True)
    elif row.get(cfg.messages_key) is not None:
        used = cfg.messages_key
        turns = _messages(row[used], where, used)
        if turns[-1]["role"] == "assistant":
            response, turns = turns[-1]["content"], turns[:-1]
            if not turns:
                raise DataError(f"{where}: field {used!r} holds only an assistant turn (no prompt)")
        messages = tuple(turns)
    else:
        raise DataError(
            f"{where}: no prompt (expected a string field {cfg.prompt_key!r} or a message list {cfg.messages_key!r})"
        )
    # The other prompt column is left out too where it is empty (rows of both kinds in one file:
    # the reader gives every row every column).
    unused_prompt = {cfg.prompt_key, cfg.messages_key} - {used}
    metadata = {k: v for k, v in row.items() if k != used and not (k in unused_prompt and v is None)}
    for name in RESERVED_FIELDS:
        if name in metadata:
            raise DataError(
                f"{where}: field {name!r} would collide with the reward function's {name!r} argument "
                f"(rename the column, or set task.prompt_key={name} if it is the prompt)"
            )
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as err:  # checkpoints store in-flight prompts as JSON
        raise DataError(f"{where}: a field is not JSON-serialisable ({err})") from None
    return RowPrompt(text, messages, response, metadata, where)


def _string(row: dict[str, Any], key: str, where: str, empty_ok: bool = False) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__} {value!r:.40}")
    if not value.strip() and not empty_ok:
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of {{role, content}} messages")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {key}[{i}] must be {{role: str, content: str}}, got {m!r:.60}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {key}[{i}].role {m['role']!r} is not one of {list(ROLES)}")
        turns.append({"role": m["role"], "content": m["content"]})
    return turns
