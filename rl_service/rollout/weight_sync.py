"""Versioned weight sync: learner -> every rollout engine, verified after load.

CPU path (implemented): learner rank 0 gathers the full state dict; it travels to the
engines through the Ray object store (returned from the learner call, so the driver
owns it and it outlives the learner); each engine loads it, resets its prefix cache,
then proves what it holds: (1) the checksum of the tensors it received equals the
published one, and (2) its logprobs on fixed probe sequences equal the learner's
within `rollout.verify_tolerance`.

GPU path (designed, not implemented here): see docs/architecture.md "Weight sync on GPU".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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
