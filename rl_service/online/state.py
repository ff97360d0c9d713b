"""The online service's durable state: `<run dir>/online/state.json`, rewritten atomically after
every transition, so a crash at any moment leaves the last adopted reward model, the served
version and the feedback position as they were when the transition before it completed.

    versions: {"0": {dir, status: serving, ...}, "1": {...}}   every candidate the loop produced
    serving:  the version the endpoint should serve (what a restart deploys)
    history:  versions served, in order (a rollback's default target is the one before)
    watermark: preference pairs in the store when the last refit read them (the next refit waits
               for `online.rm_every` more); the pairs themselves live in the feedback store
    rounds:   rounds finished (a round killed half way is redone from its start)

Version statuses: `serving`, `retired` (served, then replaced), `refused` (failed a guard before
publishing: never served), `rolled_back` (served, then replaced by an older one), `failed`
(published, but the replicas did not load it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rl_service.infra.files import write_atomic


@dataclass
class RewardModelState:
    dir: str | None = None
    """The adopted reward model (None until the first refit is adopted)."""
    accuracy: float | None = None
    """Its held-out pairwise accuracy when it was adopted."""
    refits: int = 0
    adopted: int = 0


@dataclass
class OnlineState:
    serving: int = 0
    pinned: int | None = None
    """While set, the loop serves this version and runs no rounds (`rl-service online --pin`)."""
    watermark: int = 0
    rounds: int = 0
    rollbacks: int = 0
    operator_done: int = 0
    """Lines of operator.jsonl already applied."""
    rm: RewardModelState = field(default_factory=RewardModelState)
    versions: dict[str, dict] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    operator_results: dict[str, str] = field(default_factory=dict)
    """Request id -> what was done (the CLI prints it)."""

    # --------------------------------------------------------------- versions

    def version(self, v: int) -> dict:
        return self.versions[str(v)]

    def next_version(self) -> int:
        return max((int(v) for v in self.versions), default=-1) + 1

    def add_version(self, v: int, **record) -> None:
        self.versions[str(v)] = record

    def set_serving(self, v: int, previous_status: str = "retired") -> None:
        """`v` is served from now on; the one it replaces gets `previous_status`."""
        if v == self.serving and self.version(v).get("status") == "serving":
            return
        old = self.versions.get(str(self.serving))
        if old is not None and old.get("status") == "serving":
            old["status"] = previous_status
        self.version(v)["status"] = "serving"
        self.serving = v
        self.history.append(v)

    def previous_good(self) -> int | None:
        """The version served before the current one that was not rolled back or failed."""
        for v in reversed(self.history):
            if v != self.serving and self.version(v).get("status") in ("retired", "serving"):
                return v
        return None

    # --------------------------------------------------------------- disk

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(path: Path) -> OnlineState:
        data = json.loads(Path(path).read_text())
        data["rm"] = RewardModelState(**data.get("rm", {}))
        return OnlineState(**data)
