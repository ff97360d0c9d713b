"""Versioned weight sync: learner -> every rollout engine, verified after load.

CPU path (implemented): learner rank 0 gathers the full state dict; it travels to the
engines through the Ray object store (returned from the learner call, so the driver
owns it and it outlives the learner); each engine loads it, resets its prefix cache,
then proves what it holds (`load_verified`, for rollout workers and Serve replicas alike):
(1) the checksum of the tensors it received equals the published one, and (2) its
logprobs on fixed probe sequences equal the learner's within `rollout.verify_tolerance`.

GPU path (designed, not implemented here): see docs/architecture.md "Weight sync on GPU".
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import torch


def state_dict_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) in name order; identical tensors -> same hash."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_dict_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state_dict.values())


class WeightSyncError(RuntimeError):
    """An engine holds weights other than the published version."""


def max_probe_diff(expected: tuple[tuple[float, ...], ...], got: list[list[float]]) -> float:
    """Largest |engine - learner| logprob over all probe positions."""
    if len(expected) != len(got):
        raise WeightSyncError(f"probe count mismatch: {len(expected)} published, {len(got)} scored")
    worst = 0.0
    for e, g in zip(expected, got):
        if len(e) != len(g):
            raise WeightSyncError(f"probe length mismatch: {len(e)} vs {len(g)}")
        for a, b in zip(e, g):
            worst = max(worst, abs(a - b))
    return worst


def load_verified(
    engine,
    state_dict: Mapping[str, torch.Tensor],
    meta,
    tolerance: float | None,
    who: str,
    lock: AbstractContextManager | None = None,
) -> dict:
    """Load published version `meta.version` into `engine` and prove it holds what was published.

    The one load-and-verify path, used by rollout workers and Serve replicas alike:
    (1) the checksum of `state_dict` must equal `meta.checksum` (checked before loading, so a
    corrupt version is never loaded); (2) `engine.load_weights`; (3) the engine's logprobs on
    `meta.probe_ids` must be within `tolerance` of the learner's `meta.probe_logprobs`
    (tolerance None: measured and reported, not enforced). `lock` is held around load and probe
    (the caller's generation lock), so no generation sees the weights half loaded. `who` names
    the loader in errors. Raises WeightSyncError.
    -> {"version", "probe_max_diff", "seconds"}"""
    start = time.perf_counter()
    got = state_dict_checksum(state_dict)
    if got != meta.checksum:
        raise WeightSyncError(
            f"{who}: checksum of version {meta.version} is {got[:12]}, published {meta.checksum[:12]}"
        )
    with lock if lock is not None else nullcontext():
        engine.load_weights(state_dict, meta.version)
        probe_diff = (
            max_probe_diff(meta.probe_logprobs, engine.score([list(p) for p in meta.probe_ids]))
            if meta.probe_ids
            else 0.0
        )
    if tolerance is not None and probe_diff > tolerance:
        raise WeightSyncError(
            f"{who}: version {meta.version} probe logprobs differ from the learner's "
            f"by {probe_diff:.2e} > rollout.verify_tolerance={tolerance}"
        )
    return {"version": meta.version, "probe_max_diff": probe_diff, "seconds": time.perf_counter() - start}
