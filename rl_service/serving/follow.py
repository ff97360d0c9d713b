"""Serving follows training: each synced policy version reaches every Serve replica in place.

    controller ── on_version(v, state_ref, meta) ──▶ VersionBoard (one small actor: newest version only)
                                                          ▲  poll every POLL_S (cheap: a version number)
                                   PolicyServer replica ──┘  newer? fetch state dict, verify checksum,
                                                             load under the engine lock, probe, ack

Why a board and not `handle.swap.remote(...)` alone: a Serve handle call reaches ONE replica,
so with num_replicas > 1 or autoscaling the others would keep old weights, and a replica
started later would come up with the checkpoint's. Replicas pull instead: each loads the
newest version when it starts and within POLL_S of every publish. Loading happens in the
replica (`PolicyServer.apply_version`, the same code as the `swap` handle method, verified by
`rollout.weight_sync.load_verified` like a rollout worker's load) under its engine lock: the
generation in progress finishes on the old weights, the next one uses the new; streams already
answered keep sending. The replica is never restarted.

The board holds only the newest (version, [state dict ref], meta): older versions are
released. The state dict is wrapped in a list so the board stores a reference, not tensors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from rl_service.config import ServeConfig

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often a replica asks the board for a newer version."""


class VersionBoard:
    """Actor body: the newest published version and which version each replica runs.

    `serial` counts publishes: a replica loads whatever the board holds when its serial is newer
    than the one it loaded, so a rollback (the online service republishing an OLDER version,
    `rollback=True`) reaches every replica like any publish."""

    def __init__(self):
        self.serial, self.version, self.weights, self.meta = 0, 0, None, None
        self.replicas: dict[str, tuple[int, float]] = {}

    def publish(self, version: int, weights: list, meta=None, rollback: bool = False) -> bool:
        if version <= self.version and not rollback:
            return False
        self.serial += 1
        self.version, self.weights, self.meta = version, weights, meta
        return True

    def latest(self, have_serial: int):
        """(serial, version, [state dict ref], meta) when newer than `have_serial`, else None."""
        return (self.serial, self.version, self.weights, self.meta) if self.serial > have_serial else None

    def ack(self, replica: str, version: int) -> None:
        self.replicas[replica] = (version, time.time())

    def replica_versions(self, seen_within_s: float = 5 * POLL_S + 1.0) -> dict[str, int]:
        """Version of every replica that polled recently (dead replicas drop out)."""
        now = time.time()
        return {r: v for r, (v, t) in self.replicas.items() if now - t <= seen_within_s}


def _replica_name() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id)
    except Exception:  # noqa: BLE001 - outside a replica (tests, tools)
        return f"pid-{os.getpid()}"


def follow_board(server, board, stop: threading.Event) -> threading.Thread:
    """Load the board's newest version into `server` now, then keep polling in a daemon thread."""
    import ray

    name = _replica_name()
    loaded = [0]  # the board serial this replica last loaded

    def poll_once() -> None:
        item = ray.get(board.latest.remote(loaded[0]))
        if item is not None:
            serial, version, weights, meta = item
            result = server.apply_version(version, weights, meta, exact=True)
            loaded[0] = serial  # also when it was the version already loaded
            log.info("replica %s: %s", name, result)
        board.ack.remote(name, server.version)

    poll_once()

    def loop() -> None:
        while not stop.wait(POLL_S):
            try:
                poll_once()
            except Exception as err:  # noqa: BLE001 - keep serving the loaded version; retry next poll
                log.warning("replica %s: weight follow failed: %s: %s", name, type(err).__name__, err)

    thread = threading.Thread(target=loop, name="serve-follow", daemon=True)
    thread.start()
    return thread


@dataclass
class ServeFollower:
    """What the controller holds while `serve.enabled`: start, on_version per sync, stop."""

    cfg: ServeConfig
    app_name: str
    board: object
    handle: object
    published: int = 0

    @staticmethod
    def start(cfg: ServeConfig, model_path: str, app_name: str = "policy") -> ServeFollower:
        """Deploy the endpoint on `cfg.host:cfg.port` serving `model_path` (version 0) and
        return once a replica answers. Needs `ray.init` done (the controller's session)."""
        from ray import serve

        from rl_service.infra.placement import serve_app, version_board

        board = version_board()
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        handle = serve.run(serve_app(cfg, model_path, board), name=app_name, route_prefix="/")
        return ServeFollower(cfg, app_name, board, handle)

    def on_version(self, version: int, state_dict_ref, meta=None) -> bool:
        """Offer a synced version (ObjectRef of the HF-named state dict; `meta` a PolicyVersion
        or its ref, used to verify). Publishes every `update_every`-th version and returns at
        once (replicas load it within POLL_S + load time); True when published."""
        import ray

        if version % self.cfg.update_every:
            return False
        ray.get(self.board.publish.remote(version, [state_dict_ref], meta))
        self.published = version
        return True

    def publish(self, version: int, state_dict_ref, meta=None, rollback: bool = False) -> bool:
        """Put `version` on the board now (every replica loads it within POLL_S + load time);
        `rollback`: also when it is older than the one served (the online service's rollback)."""
        import ray

        done = ray.get(self.board.publish.remote(version, [state_dict_ref], meta, rollback))
        if done:
            self.published = version
        return done

    def wait(self, version: int | None = None, timeout_s: float = 60.0, exact: bool = False) -> dict[str, int]:
        """Block until every live replica runs `version` (default: the last published) or a
        newer one (`exact`: that one; after a rollback the others are newer)."""
        import ray

        want = self.published if version is None else version
        deadline = time.monotonic() + timeout_s
        while True:
            seen = ray.get(self.board.replica_versions.remote())
            if seen and (set(seen.values()) == {want} if exact else min(seen.values()) >= want):
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving replicas at {seen}, waited for version {want}")
            time.sleep(POLL_S / 2)

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.app_name)
        finally:
            ray.kill(self.board)
