"""Liveness: an actor is declared dead when its ping fails with RayActorError (killed) or it
misses several pings in a row, never for one missed ping (a live actor inside a long call,
or on a loaded machine, misses one). Real actors on the suite's Ray."""

from __future__ import annotations

import time

import ray

from rl_service.infra.components import unresponsive


@ray.remote(num_cpus=0)
class SlowStart:
    def __init__(self, seconds: float):
        time.sleep(seconds)  # pings queue behind the constructor, as behind a vLLM engine's start


@ray.remote(num_cpus=0)
class Holder:
    def hold(self, seconds: float) -> None:
        time.sleep(seconds)  # pings queue behind this call, as behind a long generate


def _kill_and_wait(actor) -> None:
    """ray.kill is asynchronous (it goes through the GCS, a ping goes straight to the actor):
    a ping sent just after it can still be answered (seen once in CI). Wait until the actor is
    dead for sure, so the test asks about a dead actor and not about the race."""
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("a killed actor still answers pings after 30 s")


def test_a_busy_actor_survives_missed_pings_a_killed_one_does_not(session_ray):
    busy, killed, idle = (Holder.remote() for _ in range(3))
    ray.get([a.__ray_ready__.remote() for a in (busy, killed, idle)])
    _kill_and_wait(killed)
    busy.hold.remote(2.5)
    start = time.perf_counter()
    assert unresponsive([busy, killed, idle], timeout_s=1.0, pings=4) == [1]
    assert time.perf_counter() - start < 4.5  # the busy one answered once its call ended

    busy.hold.remote(2.5)
    assert unresponsive([busy, idle], timeout_s=1.0, pings=1) == [0]  # one ping: wrongly dead
    for a in (busy, idle):
        ray.kill(a, no_restart=True)


def test_a_replacement_still_starting_is_not_declared_dead(session_ray):
    """Recovery's second round must not replace the first round's replacement while it starts."""
    slow, gone = SlowStart.remote(4.0), SlowStart.remote(0.0)
    ray.get(gone.__ray_ready__.remote())
    _kill_and_wait(gone)
    assert unresponsive([slow, gone], timeout_s=0.5, pings=2) == [0, 1]  # as any silent actor: wrongly dead
    start = time.perf_counter()
    assert unresponsive([slow, gone], timeout_s=0.5, pings=2, starting={0, 1}) == [1]  # killed: dead anyway
    assert time.perf_counter() - start < 2.5
    ray.get(slow.__ray_ready__.remote(), timeout=30)  # it was alive: it started
    ray.kill(slow, no_restart=True)
