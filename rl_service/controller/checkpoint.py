"""Atomic checkpoints: write into a temp dir, rename it, then point `latest` at it.

    <run_dir>/checkpoints/
        step-000004/           a complete checkpoint (the rename is the commit)
            controller.json    data position, policy version, ledger, prompt batches in flight, counters
            learner/           torch.distributed.checkpoint shards: policy, critic, both optimizers
            learner_rank{r}.pt per rank: LR schedule, KL controller, step, NaN streak, RNG states
        latest                 "step-000004", replaced atomically (os.replace) after the rename
        .tmp-step-000005/      a write in progress, or what a crash left (never read, removed later)

A crash at any point leaves `latest` naming a complete checkpoint: the temp dir is only
renamed once every part is written and fsynced, and `latest` is written after the rename.
Older checkpoints are deleted only after `latest` names a newer one (keep the last K).

Pure Python + torch (only for reading weights back); no Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

CONTROLLER_FILE = "controller.json"
LEARNER_DIR = "learner"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_complete(ckpt: Path) -> bool:
    """A committed checkpoint dir: named step-N with its controller state (written last inside)."""
    return _STEP_DIR.match(ckpt.name) is not None and (ckpt / CONTROLLER_FILE).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def begin(root: Path, step: int) -> Path:
    """A fresh temp dir for the checkpoint of `step` (a leftover from a crash is removed first)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(root: Path, tmp: Path, step: int, controller_state: dict, keep_last: int) -> Path:
    """Finish a checkpoint whose learner parts are in `tmp`: controller state, rename, `latest`, prune."""
    with (tmp / CONTROLLER_FILE).open("w") as fh:
        json.dump(controller_state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    final = root / step_name(step)
    if final.exists():  # same step written again (e.g. a halt right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_json_atomic(root / "latest", {"checkpoint": final.name, "step": step})
    prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and stale temp dirs."""
    latest = latest_checkpoint(root)
    for old in complete_checkpoints(root)[:-keep_last]:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names; if that is missing or broken, the newest complete one."""
    pointer = root / "latest"
    if pointer.is_file():
        try:
            ckpt = root / json.loads(pointer.read_text())["checkpoint"]
            if is_complete(ckpt):
                return ckpt
        except (ValueError, KeyError, TypeError):
            pass
    done = complete_checkpoints(root)
    return done[-1] if done else None


def resolve_resume(spec: str, run_dir: Path) -> Path | None:
    """`--resume auto` -> the run dir's latest checkpoint (None if there is none);
    `--resume PATH` -> PATH itself (a step-N dir) or the latest one under PATH or PATH/checkpoints.
    The one chosen is checked to hold plain data only (check_plain_data) before anything loads it."""
    found = _find_resume(spec, run_dir)
    if found is not None:
        check_plain_data(found)
    return found


def check_plain_data(ckpt: Path) -> None:
    """CheckpointError if a pickled file of `ckpt` asks to build more than plain data
    (learner/checkpoint_io.py): a checkpoint from elsewhere must not run code on resume."""
    from rl_service.learner.checkpoint_io import UnsafeCheckpoint, check_dcp_metadata, read_local_state

    try:
        if (ckpt / LEARNER_DIR / ".metadata").is_file():
            check_dcp_metadata(ckpt / LEARNER_DIR)
        for local in sorted(ckpt.glob("learner_rank*.pt")):
            read_local_state(local)
    except UnsafeCheckpoint as err:
        raise CheckpointError(str(err)) from None


def _find_resume(spec: str, run_dir: Path) -> Path | None:
    if spec == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    path = Path(spec)
    if is_complete(path):
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise CheckpointError(
        f"--resume {spec}: no complete checkpoint there (expected a step-N dir with "
        f"{CONTROLLER_FILE}, or a run dir with checkpoints/)"
    )


def load_controller_state(ckpt: Path) -> dict:
    return json.loads((ckpt / CONTROLLER_FILE).read_text())


def load_policy_weights(ckpt: Path) -> dict:
    """The policy's full state dict (HF names) from a checkpoint, without a process group.

    Converts the DCP shards to one torch.save file (next to nothing in memory for small models).
    """
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from rl_service.learner.checkpoint_io import check_dcp_metadata

    check_dcp_metadata(ckpt / LEARNER_DIR)  # converting unpickles it: nothing but DCP's classes
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "full.pt"
        dcp_to_torch_save(ckpt / LEARNER_DIR, out)
        full = torch.load(out, weights_only=True)
    return full["policy"]
