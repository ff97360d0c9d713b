"""Atomic checkpoints: write into a temp dir, rename it, then point `latest` at it.

    <run_dir>/checkpoints/
        step-000004/           a complete checkpoint (the rename is the commit)
            controller.json    data position, policy version, ledger, prompt batches in flight, counters
            learner/           torch.distributed.checkpoint shards: policy, critic, both optimizers
            learner_rank{r}.pt per rank: LR schedule, KL controller, step, NaN streak, RNG states
            manifest.json      every other file with its size and checksum (written last)
        latest                 "step-000004", replaced atomically (os.replace) after the rename
        .tmp-step-000005/      a write in progress, or what a crash left (never read, removed later)

A crash at any point leaves `latest` naming a complete checkpoint: the temp dir is only
renamed once every part is written and fsynced (every file and directory in it, whichever
process wrote it), and `latest` is written after the rename. Older checkpoints are deleted
only after `latest` names a newer one (keep the last K).

A resume loads a checkpoint only once its manifest verifies (every file there, with its size
and checksum): one that does not -- a disk that filled up, a file lost or changed since --
is passed over with a warning for the newest one before it that does (`verified_latest`).

Pure Python + torch (only for reading weights back); no Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from rl_service.infra.files import fsync_dir, write_atomic

CONTROLLER_FILE = "controller.json"
LEARNER_DIR = "learner"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never a torn one."""
    write_atomic(path, json.dumps(obj))


def is_complete(ckpt: Path) -> bool:
    """A committed checkpoint dir: named step-N with its controller state (a cheap test; a
    resume also verifies the manifest, manifest_problem)."""
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
    """Finish a checkpoint whose learner parts are in `tmp`: controller state, every file and
    directory fsynced, the manifest, rename, `latest`, prune."""
    with (tmp / CONTROLLER_FILE).open("w") as fh:
        json.dump(controller_state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    files = _fsync_tree(tmp)  # the learners' files too: durable before the manifest vouches for them
    algo = _hashers()[1]
    write_json_atomic(tmp / MANIFEST_FILE, {"hash": algo, "files": {rel: _describe(tmp / rel, algo) for rel in files}})
    final = root / step_name(step)
    if final.exists():  # same step written again (e.g. a halt right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    write_json_atomic(root / "latest", {"checkpoint": final.name, "step": step})
    prune(root, keep_last)
    return final


def _fsync_tree(top: Path) -> list[str]:
    """fsync every file and directory under `top` (deepest first); their paths relative to it."""
    rels = []
    for dirpath, _dirs, names in os.walk(top, topdown=False):
        for name in names:
            path = Path(dirpath) / name
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
            rels.append(str(path.relative_to(top)))
        fsync_dir(Path(dirpath))
    return sorted(rels)


def _hashers():
    """The weight sync's checksum algorithms by name (xxh3_128 where installed, else sha256):
    the manifest records which one it used, so it verifies wherever it is read. Imported here,
    not at the top: the CLI imports this module before it needs torch."""
    from rl_service.rollout.weight_sync import DEFAULT_ALGO, HASHERS

    return HASHERS, DEFAULT_ALGO


def _describe(path: Path, hash_name: str | None = None) -> dict:
    hashers, default = _hashers()
    hash_name = hash_name or default
    h = hashers[hash_name]()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return {"bytes": path.stat().st_size, hash_name: h.hexdigest()}


def manifest_problem(ckpt: Path) -> str | None:
    """Why `ckpt` does not verify against its manifest (None: every file is there, same size,
    same checksum). A checkpoint written before manifests existed verifies by its controller
    state alone."""
    path = ckpt / MANIFEST_FILE
    if not path.is_file():
        return None if (ckpt / CONTROLLER_FILE).is_file() else "no manifest"
    try:
        manifest = json.loads(path.read_text())
        hash_name, files = manifest["hash"], manifest["files"]
        _hashers()[0][hash_name]
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest (or its hash is not available here)"
    for rel, want in files.items():
        file = ckpt / rel
        if not file.is_file():
            return f"{rel} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return f"{rel} has {size} bytes, the manifest says {want['bytes']}"
        if _describe(file, hash_name) != want:
            return f"{rel} does not match its checksum"
    return None


def verified_latest(root: Path) -> Path | None:
    """The newest checkpoint under `root` whose manifest verifies, `latest` first; each one
    passed over is named in a warning on stderr."""
    first = latest_checkpoint(root)
    rest = [p for p in reversed(complete_checkpoints(root)) if p != first]
    for ckpt in ([first] if first is not None else []) + rest:
        problem = manifest_problem(ckpt)
        if problem is None:
            return ckpt
        print(f"warning: checkpoint {ckpt} does not verify ({problem}); trying the one before it", file=sys.stderr)
    return None


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
    from rl_service.learner.checkpoint_io import DCP_METADATA, UnsafeCheckpoint, check_dcp_metadata, read_local_state

    try:
        if (ckpt / LEARNER_DIR / DCP_METADATA).is_file():
            check_dcp_metadata(ckpt / LEARNER_DIR)
        for local in sorted(ckpt.glob("learner_rank*.pt")):
            read_local_state(local)
    except UnsafeCheckpoint as err:
        raise CheckpointError(str(err)) from None


def _find_resume(spec: str, run_dir: Path) -> Path | None:
    if spec == "auto":
        return verified_latest(run_dir / "checkpoints")
    path = Path(spec)
    if is_complete(path):  # asked for by name: it verifies or the resume stops
        problem = manifest_problem(path)
        if problem is not None:
            raise CheckpointError(f"--resume {spec}: the checkpoint does not verify ({problem})")
        return path
    for root in (path / "checkpoints", path):
        found = verified_latest(root)
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
