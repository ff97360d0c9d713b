"""The streamed weight sync (rollout/weight_stream.py) between plain processes over gloo: what the
workers receive is bit-equal to what rank 0 sent, both sides compute the published checksum, a
corrupted byte on a worker is refused by load_verified, and a worker dying mid-stream makes the
sender fail (not hang) and the group re-forms at the next generation with its replacement."""

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from rl_service.infra.env import free_port
from rl_service.rollout.weight_stream import GroupSpec, Inbox, SyncGroup, layout_of, send
from rl_service.rollout.weight_sync import WeightSyncError, load_verified, state_dict_checksum
from rl_service.types import PolicyVersion

PROBES = ((1, 2, 3),)
PROBE_LOGPROBS = ((-0.5, -0.25),)


def weights() -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes, like a state dict (a 0-dim entry, an empty one, an odd size)."""
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed.weight": torch.randn(37, 16, generator=g),
        "model.layers.0.q.weight": torch.randn(16, 16, generator=g),
        "model.layers.0.norm.weight": torch.randn(16, generator=g).to(torch.bfloat16),
        "model.layers.1.q.weight": torch.randn(16, 16, generator=g).half(),
        "model.step": torch.tensor(7),
        "model.empty": torch.zeros(0, 3),
        "lm_head.weight": torch.randn(37, 16, generator=g),
    }


class FakeEngine:
    """The engine side load_verified drives: keeps what it was given, scores the probes as published."""

    def __init__(self):
        self.loaded, self.version = None, 0

    def load_weights(self, state_dict, version):
        self.loaded, self.version = {k: v.clone() for k, v in state_dict.items()}, version

    def score(self, sequences):
        return [list(PROBE_LOGPROBS[0]) for _ in sequences]


def receiver(rank: int, specs: list, corrupt: bool, die: bool, meta_q, out_q) -> None:
    """One worker process: receive each spec's stream in turn (the same Inbox), then verify+load."""
    inbox = Inbox(rank)
    layout = layout_of(weights().items())
    for stream_id, spec in enumerate(specs, start=1):
        if die:  # join, take one tensor, die mid-stream
            pg = SyncGroup(rank).join(spec)
            pg.broadcast(torch.empty(37 * 16 * 4, dtype=torch.uint8), 0, spec.timeout).wait()
            os._exit(3)
        try:
            inbox.receive(spec, layout, stream_id)
            views = inbox.take(stream_id, 30)
        except Exception as err:  # noqa: BLE001 - reported to the test
            out_q.put((rank, stream_id, "receive failed", type(err).__name__))
            continue
        if corrupt:
            views["model.layers.0.q.weight"].view(-1).view(torch.uint8)[5] ^= 1
        checksum = state_dict_checksum(views)
        received = {k: (v.dtype, tuple(v.shape), raw_bytes(v)) for k, v in views.items()}  # no fd-shared tensors
        meta = meta_q.get(timeout=60)
        engine = FakeEngine()
        try:
            load_verified(engine, views, meta, 1e-6, f"worker-{rank}")
            out_q.put((rank, stream_id, "loaded", (received, checksum, engine.version)))
        except WeightSyncError as err:
            out_q.put((rank, stream_id, "refused", (str(err), engine.loaded is None)))


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def start(ctx, rank, specs, meta_q, out_q, corrupt=False, die=False):
    p = ctx.Process(target=receiver, args=(rank, specs, corrupt, die, meta_q, out_q), daemon=True)
    p.start()
    return p


def meta_of(sent: dict, version: int = 1) -> PolicyVersion:
    return PolicyVersion(version, sent["checksum"], sent["num_bytes"], PROBES, PROBE_LOGPROBS)


def results(out_q, n: int, timeout_s: float = 60) -> dict:
    got = {}
    for _ in range(n):
        rank, stream_id, what, detail = out_q.get(timeout=timeout_s)
        got[(rank, stream_id)] = (what, detail)
    return got


@pytest.fixture
def ctx():
    return mp.get_context("spawn")


def spec(port: int, generation: int = 0, timeout_s: float = 30) -> GroupSpec:
    return GroupSpec("127.0.0.1", port, world_size=3, generation=generation, timeout_s=timeout_s)


def test_received_tensors_are_bit_equal_and_checksums_agree_and_corruption_is_refused(ctx):
    meta_qs, out_q = [ctx.Queue(), ctx.Queue()], ctx.Queue()
    s = spec(free_port())
    procs = [start(ctx, 1, [s], meta_qs[0], out_q), start(ctx, 2, [s], meta_qs[1], out_q, corrupt=True)]
    sd = weights()
    sent = send(SyncGroup(0), s, iter(sorted(sd.items())))
    assert sent["error"] is None
    assert sent["checksum"] == state_dict_checksum(sd)  # what rank 0 hashed while sending
    assert sent["num_bytes"] == sum(t.numel() * t.element_size() for t in sd.values())
    for q in meta_qs:
        q.put(meta_of(sent))
    got = results(out_q, 2)
    what, (received, checksum, version) = got[(1, 1)]
    assert what == "loaded" and version == 1
    assert checksum == sent["checksum"]
    assert sorted(received) == sorted(sd)
    for name, t in sd.items():  # bit-equal: same dtype, shape and bytes
        assert received[name] == (t.dtype, tuple(t.shape), raw_bytes(t)), name
    what, (message, never_loaded) = got[(2, 1)]
    assert what == "refused" and "checksum" in message and never_loaded
    for p in procs:
        p.join(10)


def test_a_worker_dying_mid_stream_fails_the_send_and_the_next_generation_recovers(ctx):
    port = free_port()
    first, second = spec(port, 0, timeout_s=20), spec(port, 1, timeout_s=20)
    queues = {name: (ctx.Queue(), ctx.Queue()) for name in ("survivor", "dying", "replacement")}
    survivor = start(ctx, 1, [first, second], *queues["survivor"])
    dying = start(ctx, 2, [first], *queues["dying"], die=True)
    sd, group = weights(), SyncGroup(0)
    t0 = time.perf_counter()
    failed = send(group, first, iter(sorted(sd.items())))
    assert failed["error"] is not None and failed["checksum"] is None
    assert time.perf_counter() - t0 < 20  # the dead peer is noticed, not waited out
    # The survivor should fail too (rank 0 dropped the group; at worst its own 20 s op timeout
    # fires) and report it. Under load it has instead stayed silent (CI 2026-12-02, 3 of ~6
    # loaded runs; not reproduced idle; cause open, see docs/reliability.md). The driver treats a
    # worker whose stream is not taken in time as failed and replaces it (weight_streamer.py), so
    # the test does the same: a silent survivor is killed and replaced in the next generation.
    try:
        reported = results(queues["survivor"][1], 1, timeout_s=60)[(1, 1)][0]
    except Exception:  # noqa: BLE001 - queue.Empty: silent
        reported = None
    assert reported in ("receive failed", None), reported  # never "loaded": stream 1 was cut
    dying.join(10)
    receivers, nxt = [("replacement", 2, 1)], second
    if reported is None:  # both members new, in a generation the killed one never joined
        survivor.kill()
        survivor.join(10)
        nxt = spec(port, 2, timeout_s=20)
        survivor = start(ctx, 1, [nxt], *queues["dying"])  # fresh queues for the new rank 1
        receivers.append(("dying", 1, 1))
    else:
        receivers.append(("survivor", 1, 2))
    replacement = start(ctx, 2, [nxt], *queues["replacement"])
    sent = send(group, nxt, iter(sorted(sd.items())))  # same store, the next generation's prefix
    assert sent["error"] is None and sent["checksum"] == state_dict_checksum(sd)
    for name, rank, stream_id in receivers:
        meta_q, out_q = queues[name]
        meta_q.put(meta_of(sent))
        what, detail = results(out_q, 1)[(rank, stream_id)]
        assert what == "loaded" and detail[1] == sent["checksum"], (name, what, detail)
    for p in (survivor, replacement):
        p.join(10)


def test_take_refuses_a_stream_that_never_arrived():
    with pytest.raises(WeightSyncError, match="not received within"):
        Inbox(1).take(1, 0.05)
