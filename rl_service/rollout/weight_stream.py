"""Streamed weight sync (`rollout.weight_sync: collective`): learner rank 0 broadcasts the policy
one tensor at a time on a process group of its own; each rollout worker receives into buffers it
allocated once, then verifies and loads them with `weight_sync.load_verified`.

    learner ranks 0..K-1 (FSDP group)      weight-sync group: rank 0 = learner rank 0,
      for name in sorted(state dict):        rank 1 + i = rollout worker i (its own TCPStore prefix
        t = full_tensor()  (all-gather)      per generation; the FSDP group is never touched)
        rank 0: hash(t); broadcast(t) ──────▶ worker: buffer[name] <- bytes   (no engine lock)
      rank 0: checksum (what it sent) ──Ray──▶ worker: load_verified(buffers, meta): checksum over
                                                what it received, load under the lock, probe check

What blocks what: every FSDP rank takes part in each `full_tensor()` (an all-gather), so the
learner group walks the tensors together; rank 0's broadcast of tensor i overlaps the gather of
i+1 (`WINDOW` sends in flight, the only full tensors alive at rank 0: the model is never gathered
whole there). A broadcast completes when every member has taken the bytes, so a worker that does
not receive holds the learner back, up to the group timeout. Receiving takes no engine lock: the
worker's generation loop runs meanwhile; only the swap (load + probe) takes the generation lock,
and it waits for the batch being generated to finish.

On a failure (a member died, a timeout) rank 0 stops sending, still takes part in every gather
(its FSDP peers would hang otherwise), aborts the group and reports the error; the driver then
forms a new group (the next `generation`, a fresh store prefix) and sends the version again.
On CPU the group is gloo; with the learner on CUDA it is NCCL and the buffers live on the
engines' GPU (docs/architecture.md, "Weight sync").
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rl_service.rollout.weight_sync import DEFAULT_ALGO, Checksum, WeightSyncError

WINDOW = 4
"""Broadcasts in flight at once: the gather of the next tensors overlaps the send of this one."""
ALIGN = 64
"""Byte alignment of each tensor in a receive buffer (any dtype's view of it is aligned)."""


@dataclass(frozen=True)
class GroupSpec:
    """Where and which weight-sync group to join (handed out by the driver)."""

    host: str
    port: int
    """TCPStore of the group, served by learner rank 0 (member rank 0)."""
    world_size: int
    """1 (learner rank 0) + the number of rollout workers."""
    generation: int
    """Bumped by the driver whenever a member changes or a stream failed: a new group is formed."""
    backend: str = "gloo"
    timeout_s: float = 120.0
    """Per operation: joining the group, each broadcast."""

    @property
    def timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of the stream: name, dtype (torch name, e.g. `float32`) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def layout_of(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[TensorSlot, ...]:
    """The stream's order and shapes: `(name, tensor)` pairs (any order) -> slots sorted by name."""
    return tuple(
        TensorSlot(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in sorted(named, key=lambda x: x[0])
    )


class SyncGroup:
    """One member's end of the weight-sync group: joined lazily, re-formed on a new generation.
    Rank 0 serves the TCPStore (created once, kept across generations)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.store = None
        self.address: tuple[str, int] | None = None
        """(host, port) of `store`."""
        self.pg = None
        self.spec: GroupSpec | None = None

    def join(self, spec: GroupSpec):
        """The process group of `spec` (formed now unless already joined): blocks until every member joins."""
        if self.spec == spec and self.pg is not None:
            return self.pg
        self.close()
        if self.address != (spec.host, spec.port):
            self.store = dist.TCPStore(
                spec.host, spec.port, is_master=self.rank == 0, timeout=spec.timeout, wait_for_workers=False
            )
            self.address = (spec.host, spec.port)
        store = dist.PrefixStore(f"weights/{spec.generation}", self.store)
        if spec.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = spec.timeout
            self.pg = dist.ProcessGroupNCCL(store, self.rank, spec.world_size, opts)
        else:
            self.pg = dist.ProcessGroupGloo(store, self.rank, spec.world_size, spec.timeout)
        self.spec = spec
        return self.pg

    def close(self) -> None:
        """Drop the group: abort its connections (members blocked on it fail instead of waiting)."""
        pg, self.pg, self.spec = self.pg, None, None
        if pg is not None:
            try:
                pg.abort()
            except RuntimeError:  # already broken: nothing left to abort
                pass


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """The tensor's memory as a flat uint8 tensor (a view when contiguous): any dtype broadcasts."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def send(group: SyncGroup, spec: GroupSpec, named: Iterator[tuple[str, torch.Tensor]], algo: str = DEFAULT_ALGO):
    """Rank 0: broadcast each `(name, tensor)` in turn (the layout's order) and hash what was sent.

    `named` is consumed to its end even after a failure (it drives the FSDP all-gathers).
    -> {"checksum": "algo:hex" or None, "num_bytes", "error": None or a one-line reason, "send_s"}"""
    start, h, sent, error = time.perf_counter(), Checksum(algo), 0, None
    inflight: deque = deque()  # (work, tensor kept alive until its send completes)
    try:
        pg = group.join(spec)
    except RuntimeError as err:
        pg, error = None, f"joining the weight-sync group: {err}"
    for name, t in named:
        if error is not None:
            continue
        try:
            h.update(name, t)
            if not t.numel():  # nothing to send (the receiver skips it too: its slot is 0 bytes)
                continue
            inflight.append((pg.broadcast(_bytes_of(t), 0, spec.timeout), t))
            sent += t.numel() * t.element_size()
            while len(inflight) > WINDOW:
                inflight.popleft()[0].wait(spec.timeout)
        except RuntimeError as err:
            error = f"broadcasting {name}: {err}"
    try:
        while inflight and error is None:
            inflight.popleft()[0].wait(spec.timeout)
    except RuntimeError as err:
        error = f"broadcast: {err}"
    if error is not None:
        group.close()
    return {
        "checksum": None if error else h.hexdigest(),
        "num_bytes": sent,
        "error": _first_line(error),
        "send_s": time.perf_counter() - start,
    }


class Inbox:
    """A worker's end: receive buffers for one layout (allocated on the first stream, reused), and
    which stream they hold. `receive` fills them (no engine lock); `take` hands them to the loader."""

    def __init__(self, rank: int):
        self.group = SyncGroup(rank)
        self.device = "cpu"
        """Where the buffers live: the engine's GPU under NCCL, else CPU (gloo)."""
        self.layout: tuple[TensorSlot, ...] = ()
        self.buffer: torch.Tensor | None = None
        """[total bytes] uint8; each slot a view into it at an ALIGN-ed offset."""
        self.views: dict[str, torch.Tensor] = {}
        self._cond = threading.Condition()
        self._state: tuple[int, BaseException | None] | None = None
        """(stream id, its error or None) of the last receive that ended."""

    def _allocate(self, layout: tuple[TensorSlot, ...], device: str) -> None:
        offsets, total = [], 0
        for slot in layout:
            offsets.append(total)
            total += -(-slot.nbytes // ALIGN) * ALIGN
        self.buffer = torch.empty(total, dtype=torch.uint8, device=device)
        self.views = {
            s.name: self.buffer[o : o + s.nbytes].view(getattr(torch, s.dtype)).view(s.shape)
            for s, o in zip(layout, offsets)
        }
        self.layout, self.device = layout, device

    def receive(self, spec: GroupSpec, layout: tuple[TensorSlot, ...], stream_id: int) -> dict:
        """Join `spec`'s group and receive every slot of `layout` into the buffers -> {"receive_s"}.
        A failure closes the group (the driver forms a new one) and is raised here and by `take`."""
        start, error = time.perf_counter(), None
        try:
            device = "cuda" if spec.backend == "nccl" else "cpu"
            if (layout, device) != (self.layout, self.device):
                self._allocate(layout, device)
            pg = self.group.join(spec)
            inflight: deque = deque()
            for slot in (s for s in layout if s.nbytes):
                inflight.append(pg.broadcast(_bytes_of(self.views[slot.name]), 0, spec.timeout))
                while len(inflight) > WINDOW:
                    inflight.popleft().wait(spec.timeout)
            while inflight:
                inflight.popleft().wait(spec.timeout)
        except BaseException as err:
            error = err
            self.group.close()
            raise
        finally:
            with self._cond:
                self._state = (stream_id, error)
                self._cond.notify_all()
        return {"receive_s": time.perf_counter() - start}

    def take(self, stream_id: int, timeout_s: float) -> dict[str, torch.Tensor]:
        """The buffers once stream `stream_id` is in (views: the next stream overwrites them)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._state is not None and self._state[0] >= stream_id, timeout_s):
                raise WeightSyncError(f"stream {stream_id} not received within {timeout_s} s")
            got, error = self._state
        if got != stream_id or error is not None:
            raise WeightSyncError(f"stream {stream_id} was not received: {_first_line(str(error))}") from error
        return dict(self.views)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _first_line(text: str | None) -> str | None:
    return None if text is None else (str(text).strip().splitlines() or [""])[0]


def keeping(named, kept: dict[str, torch.Tensor]):
    """`named` passed through, a copy of each tensor put in `kept` (the stream's tensors may be
    the live parameters)."""
    for name, t in named:
        kept[name] = t.detach().to("cpu", copy=True)
        yield name, t
