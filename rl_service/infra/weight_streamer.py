"""The driver's end of `rollout.weight_sync: collective` (rl_service/rollout/weight_stream.py).

One sync = one stream: every worker is asked to receive (`receive_weights`, it starts waiting on
the group), every learner rank to `publish_stream`; once the learners return (rank 0 has sent
every tensor) each worker is asked to `commit_weights` with the version's metadata. Only that
metadata, the layout and the group spec go through Ray; the tensors go over the group.

    publish(v)   launch the stream, wait for the learners (the learner's share of the sync)
    deliver()    the load of v: waits for every worker's verify + swap, unless `defer` (lag >= 1):
                 then the swap finishes while the driver goes on, and `settle()` waits for it
                 before the learner next changes its weights (loop.py: before train, evaluate)
    catch_up()   a worker was replaced: a new group (next generation) and v sent to every worker

Failures: a transport failure (a worker died or timed out mid-stream; rank 0 then aborts the
group, so the others fail fast) raises ComponentFailure; recovery.py replaces what died, and
the version goes out again on a group of the next generation. A verification failure (checksum
or probe mismatch) is raised as is, as with the object store: a wrong version is never served.
"""

from __future__ import annotations

import dataclasses

import ray

from rl_service.rollout.weight_stream import GroupSpec, TensorSlot

_CRASHED = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


@dataclasses.dataclass
class WeightStreamer:
    spec: GroupSpec
    layout: tuple[TensorSlot, ...]
    defer: bool
    """Leave the workers' swap in flight after deliver() (safe with train.max_policy_lag >= 1)."""
    keep_state_dict: bool
    """Also return the state dict from learner rank 0 (a Serve follower loads it from the object store)."""
    version: int = 0
    probes: list = dataclasses.field(default_factory=list)
    meta: object = None
    """PolicyVersion of the newest version sent (None before the first)."""
    state_ref: object = None
    stream_id: int = 0
    pending: tuple | None = None
    """(receive refs, commit refs) of the stream in flight."""
    delivered: bool = True
    last: dict = dataclasses.field(default_factory=lambda: {"probe_max_diff": float("nan"), "load_s": 0.0})
    """The last settled load (slowest worker)."""

    def publish(self, learners: list, workers: list, version: int, probes: list) -> dict:
        """Stream `version`; a transport failure is kept for deliver() to retry, not raised."""
        from rl_service.infra.components import ComponentFailure

        self.version, self.probes, self.delivered = version, probes, False
        self.state_ref = None  # set again once this version went out
        try:
            self._launch(learners, workers)
        except ComponentFailure:
            self.pending = None
        return {"state_ref": self.state_ref, "meta_ref": self.meta}

    def deliver(self, learners: list, workers: list) -> dict:
        """The newest version loaded, verified, into every worker (a failed stream is sent again)."""
        if self.delivered:
            return self.last
        if self.pending is None:
            self._launch(learners, workers)
        return self.last if self.defer else self.settle()

    def settle(self) -> dict:
        """Wait for the stream in flight: every worker received, verified and swapped it in."""
        from rl_service.infra.components import ComponentFailure

        if self.pending is None:
            return self.last
        receives, commits = self.pending
        self.pending = None
        failed = _first_failure(receives)
        if failed is None:
            try:
                results = ray.get(commits)
            except _CRASHED as err:
                failed = err
        if failed is not None:
            self._next_group()
            raise ComponentFailure(f"weight stream of version {self.version} failed: {_first_line(failed)}")
        self.delivered = True
        self.last = {
            "probe_max_diff": max(r["probe_max_diff"] for r in results),
            "load_s": max(r["seconds"] for r in results),
        }
        return self.last

    def catch_up(self, learners: list, workers: list) -> None:
        """After a worker was replaced: a new group with it, and the newest version sent to all."""
        if self.pending is not None:  # what was in flight is sent again below
            _first_failure(self.pending[0] + self.pending[1])
            self.pending = None
        self._next_group()
        if self.meta is None:  # nothing published yet: every engine holds the base model
            return
        self.delivered = False
        self._launch(learners, workers)
        self.settle()

    def _launch(self, learners: list, workers: list) -> None:
        from rl_service.infra.components import ComponentFailure, learner_results

        self.stream_id += 1
        spec, sid = self.spec, self.stream_id
        receives = [w.receive_weights.remote(spec, self.layout, sid) for w in workers]
        calls = [
            learner.publish_stream.options(num_returns=2).remote(
                self.version, self.probes, spec, self.keep_state_dict and rank == 0
            )
            for rank, learner in enumerate(learners)
        ]
        outcome = learner_results(learners, [c[0] for c in calls], "publish_stream")[0]
        if outcome["error"] is not None:
            _first_failure(receives)  # they fail fast: rank 0 aborted the group
            self._next_group()
            raise ComponentFailure(f"weight stream of version {self.version} failed: {outcome['error']}")
        self.meta, self.state_ref = outcome["meta"], calls[0][1] if self.keep_state_dict else None
        commits = [w.commit_weights.remote(self.meta, sid) for w in workers]
        self.pending = (receives, commits)

    def _next_group(self) -> None:
        self.spec = dataclasses.replace(self.spec, generation=self.spec.generation + 1)


def _first_failure(refs: list) -> BaseException | None:
    """Wait for every ref; the first error among them (None if all succeeded)."""
    first = None
    for ref in refs:
        try:
            ray.get(ref)
        except Exception as err:  # noqa: BLE001 - any failure of the transfer means: send again
            first = first or err
    return first


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
