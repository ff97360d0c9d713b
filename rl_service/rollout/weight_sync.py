"""Versioned weight sync: learner -> every rollout engine, verified after load.

rollout.weight_sync=object_store (the default): learner rank 0 gathers the full state dict; it travels to the
engines through the Ray object store (returned from the learner call, so the driver
owns it and it outlives the learner); each engine loads it, resets its prefix cache,
then proves what it holds (`load_verified`, for rollout workers and Serve replicas alike):
(1) the checksum of the tensors it received equals the published one (xxh3, one pass over
the bytes: `state_dict_checksum`), and (2) its logprobs on fixed probe sequences equal the
learner's within `rollout.verify_tolerance`.

rollout.weight_sync=collective: the tensors are streamed over a process group of their own
instead (rollout/weight_stream.py, gloo; NCCL with the learner on CUDA) and the received buffers
go through the same `load_verified`; `Checksum` is `state_dict_checksum` one tensor at a time,
for the sender. docs/architecture.md, "Weight sync".
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch

try:
    import xxhash
except ImportError:  # a bare GPU machine (no registry): the sha256 fallback below, same framing
    xxhash = None

# Checksum algorithms by the name that prefixes a published checksum ("xxh3_128:<hex>"). The
# verifier hashes with the algorithm the publisher named, so the two sides always agree on it.
# xxh3 is not cryptographic: the checksum guards against corruption and mix-ups (a wrong or
# half-written version, a misrouted transfer), not against someone able to write the object
# store; one pass over the 30M model's 117 MiB takes 5 ms against sha256's 71 ms (bench
# weight_sync, 2-core EPYC), and a sync makes one at the learner and one in each loader.
HASHERS: dict[str, Callable[[], object]] = {"sha256": hashlib.sha256}
if xxhash is not None:
    HASHERS["xxh3_128"] = xxhash.xxh3_128
DEFAULT_ALGO = "xxh3_128" if xxhash is not None else "sha256"


class Checksum:
    """The incremental form of `state_dict_checksum`: `update(name, tensor)` in name order, then
    `hexdigest()`; a streamed publish hashes each tensor as it sends it, and gets the same value
    `state_dict_checksum` gives for the whole dict."""

    def __init__(self, algo: str = DEFAULT_ALGO):
        if algo not in HASHERS:
            raise WeightSyncError(f"checksum algorithm {algo!r} is not available here (have {sorted(HASHERS)})")
        self.algo, self._h = algo, HASHERS[algo]()

    def update(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        t = (t if t.device.type == "cpu" else t.cpu()).contiguous()
        # the header ends each field with NUL and states the byte count, so no two different
        # (name, dtype, shape, bytes) sequences can concatenate to the same stream
        self._h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{t.numel() * t.element_size()}\0".encode())
        if t.numel():
            self._h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    def hexdigest(self) -> str:
        """`algo:hex`, the published form."""
        return f"{self.algo}:{self._h.hexdigest()}"


def state_dict_checksum(state_dict: Mapping[str, torch.Tensor], algo: str = DEFAULT_ALGO) -> str:
    """`algo:hex` over (name, dtype, shape, bytes) of every tensor in name order: identical tensors
    -> same checksum; any other name, dtype, shape or byte -> another one. One pass over the
    bytes, no copy for contiguous CPU tensors (the hasher reads the tensor's memory)."""
    h = Checksum(algo)
    for name in sorted(state_dict):
        h.update(name, state_dict[name])
    return h.hexdigest()


def checksum_algo(checksum: str) -> str:
    """The algorithm a published checksum names (`algo:hex`); unprefixed = the old sha256 form."""
    algo, sep, _ = checksum.partition(":")
    return algo if sep else "sha256"


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
    corrupt version is never loaded); (2) `engine.load_weights`, or with `meta.adapter_config`
    (model.lora.sync=adapters) `engine.load_adapter` of the adapter tensors; (3) the engine's logprobs on
    `meta.probe_ids` must be within `tolerance` of the learner's `meta.probe_logprobs`
    (tolerance None: measured and reported, not enforced). `lock` is held around load and probe
    (the caller's generation lock), so no generation sees the weights half loaded. `who` names
    the loader in errors. Raises WeightSyncError.
    -> {"version", "probe_max_diff", "seconds", "bytes" (what was loaded)}"""
    start = time.perf_counter()
    got = state_dict_checksum(state_dict, checksum_algo(meta.checksum))
    if got != meta.checksum:
        raise WeightSyncError(
            f"{who}: checksum of version {meta.version} is {got[:21]}, published {meta.checksum[:21]}"
        )
    with lock if lock is not None else nullcontext():
        if getattr(meta, "adapter_config", ""):  # LoRA adapters on the engine's base weights
            if not hasattr(engine, "load_adapter"):
                raise WeightSyncError(f"{who}: version {meta.version} is LoRA adapters; this engine serves none")
            engine.load_adapter(state_dict, meta.adapter_config, meta.version)
        else:
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
    return {
        "version": meta.version,
        "probe_max_diff": probe_diff,
        "seconds": time.perf_counter() - start,
        "bytes": state_dict_bytes(state_dict),
    }
