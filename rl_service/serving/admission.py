"""Who may enter a replica, and who holds its engine.

    request ──▶ Admission.admit()   at most max_ongoing + max_queued held (generating or waiting
                  │                 for the engine); the next one gets the 503 envelope at once,
                  │                 before its body is read
                  ▼
              EngineSlot.call(fn)   each admitted request waits in its own pool thread (waiting never
                                    starves the default executor: feedback writes, swaps), then runs
                                    holding the engine lock: one generation or one swap at a time

Serve's own bounds sit above the app's (OVERLOAD_HEADROOM in rl_service/infra/placement.py), so
overload is answered here in the OpenAI envelope and Serve's plain-text 503 only past that.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rl_service.serving import protocol as P


class Ticket:
    """One admitted request. `release()` is idempotent: whoever finishes the request last may call
    it. A stream sets `handed_over`: its engine thread releases when the generation ends."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._released = False
        self.handed_over = False

    def release(self) -> None:
        with self._admission.lock:
            if not self._released:
                self._released = True
                self._admission.admitted -= 1


class Admission:
    """The replica's bound on requests it holds: `limit` = max_ongoing_requests + max_queued_requests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.admitted = self.peak_admitted = self.overloaded = 0

    def admit(self) -> Ticket:
        """Count this request in, or refuse it with the 503 envelope (protocol.overloaded)."""
        with self.lock:
            if self.admitted >= self.limit:
                self.overloaded += 1
                raise P.overloaded(self.limit)
            self.admitted += 1
            self.peak_admitted = max(self.peak_admitted, self.admitted)
        return Ticket(self)

    def stats(self) -> dict[str, int]:
        return {"admitted": self.admitted, "peak_admitted": self.peak_admitted, "overloaded": self.overloaded}


class EngineSlot:
    """The engine lock, the pool admitted requests wait in (`workers` threads: one per admitted
    request), and counts of engine calls. Swaps take `lock` directly (they are not generations)."""

    def __init__(self, workers: int):
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="engine")
        self.generations = self.active = self.peak_active = 0
        self.cancelled = self.stream_tokens = 0
        """Streams stopped before the engine ended them (client gone, or every choice already stopped)."""

    def run(self, fn: Callable[[], Any]) -> Any:
        """`fn()` holding the engine lock, in the calling thread (a pool thread)."""
        with self.lock:
            self.generations += 1
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            try:
                return fn()
            finally:
                self.active -= 1

    async def call(self, fn: Callable[[], Any]) -> Any:
        """`run(fn)` in a pool thread, awaited on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.run, fn)

    def stats(self) -> dict[str, int]:
        return {
            "generations": self.generations,
            "active": self.active,
            "peak_active": self.peak_active,
            "streams_cancelled": self.cancelled,
            "stream_tokens": self.stream_tokens,
        }

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
