"""Bounded queues between components, carrying object refs to whole batches.

Both implementations share one small interface:

    put(batch, summary=None, timeout=None)   blocks while full (backpressure); raises queue.Full
    get(timeout) -> batch | None             the batch itself (fetched), None on timeout
    get_ref(timeout) -> (ref, summary) | None   for the controller: the ref, not the data
    qsize() -> int

`RayBatchQueue` puts the batch into the object store once (`ray.put`, owned by the producer)
and moves only the ref and a small summary through the `ray.util.queue.Queue` actor.
`LocalQueue` is the in-memory twin used by unit tests of actor bodies.

The queue actor is a single point of failure: if it dies, its contents are gone and every
put/get on it raises `RayActorError`. The controller then rebuilds the queues and re-puts
every batch it issued and has not trained (rl_service/controller/recovery.py). The named queue
actors are created in rl_service/infra/placement.py (`make_queues`).
"""

from __future__ import annotations

import queue as _queue
from typing import Any


class LocalQueue:
    def __init__(self, maxsize: int):
        self._q: _queue.Queue = _queue.Queue(maxsize)

    def put(self, batch: Any, summary: Any = None, timeout: float | None = None) -> None:
        self._q.put((batch, summary), timeout=timeout)

    def get_ref(self, timeout: float | None = None):
        try:
            return self._q.get(timeout=timeout)
        except _queue.Empty:
            return None

    def get(self, timeout: float | None = None):
        item = self.get_ref(timeout)
        return None if item is None else item[0]

    def qsize(self) -> int:
        return self._q.qsize()


class RayBatchQueue:
    def __init__(self, maxsize: int, name: str):
        from ray.util.queue import Queue

        # The queue actor needs no CPU of its own: it only moves refs.
        self._q = Queue(maxsize=maxsize, actor_options={"name": name, "num_cpus": 0})
        self.name = name

    def put(self, batch: Any, summary: Any = None, timeout: float | None = None) -> None:
        import ray

        self._q.put((ray.put(batch), summary), block=True, timeout=timeout)

    def get_ref(self, timeout: float | None = None):
        from ray.util.queue import Empty

        try:
            return self._q.get(block=True, timeout=timeout)
        except Empty:
            return None

    def get(self, timeout: float | None = None):
        import ray

        item = self.get_ref(timeout)
        return None if item is None else ray.get(item[0])

    def qsize(self) -> int:
        return self._q.qsize()

    def alive(self, timeout: float = 5.0, pings: int = 3) -> bool:
        """False if the queue actor is dead (its contents are gone) or missed `pings` pings in a
        row (one missed ping on a loaded machine is not death)."""
        import ray

        for _ in range(pings):
            try:
                ray.get(self._q.actor.qsize.remote(), timeout=timeout)
                return True
            except ray.exceptions.RayActorError:
                return False
            except ray.exceptions.GetTimeoutError:
                continue
        return False

    def kill(self) -> None:
        """Kill the queue actor but keep this handle (a crash; rl_service/testing/faults.py): calls on it raise."""
        import ray

        ray.kill(self._q.actor, no_restart=True)

    def shutdown(self) -> None:
        # force: blocked put/get calls of other processes must fail now, not after a grace period
        self._q.shutdown(force=True)
