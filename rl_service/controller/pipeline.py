"""The controller's batch bookkeeping: issue prompt batches, collect scored ones.

    issue(k) ─▶ pending{batch id: PromptBatch} ─▶ put on the prompt queue
    collect(version) ◀─ scored queue: keep one step's batches in batch-id order,
                        drop a stale batch (and issue a replacement), drop a second copy
    a crash on the way ─▶ recovery.py: replace what died, put every pending batch again

`pending` holds every batch issued and not yet trained or dropped; it is what a checkpoint
saves and what a crash re-puts, so no prompt is lost. A batch put twice after a recovery
can arrive twice: the copy is dropped by batch id (`faults/duplicates_dropped`).
"""

from __future__ import annotations

import time

from rl_service.config import Config
from rl_service.controller.ledger import SampleLedger
from rl_service.controller.recovery import FaultLog, Recovery
from rl_service.infra.components import ComponentFailure, Components
from rl_service.tasks import PromptStream
from rl_service.testing import faults
from rl_service.types import BatchSummary, Prompt, PromptBatch


def batch_to_json(b: PromptBatch) -> dict:
    """A pending batch as a checkpoint stores it: [id, text, metadata] per prompt, plus its token
    ids when the task gave them (so a resumed run generates from the very same ids)."""
    return {
        "batch_id": b.batch_id,
        "prompts": [
            [p.prompt_id, p.text, p.metadata] + ([] if p.token_ids is None else [list(p.token_ids)]) for p in b.prompts
        ],
    }


def batch_from_json(d: dict) -> PromptBatch:
    def prompt(i, text, metadata, token_ids=None) -> Prompt:
        return Prompt(int(i), text, dict(metadata), None if token_ids is None else tuple(int(t) for t in token_ids))

    return PromptBatch(int(d["batch_id"]), tuple(prompt(*p) for p in d["prompts"]))


class BatchPipeline:
    """Prompt batches from issue to training, across component crashes."""

    def __init__(
        self,
        cfg: Config,
        comps: Components,
        stream: PromptStream,
        ledger: SampleLedger,
        flog: FaultLog,
        recovery: Recovery,
        next_batch_id: int = 0,
    ):
        self.cfg, self.comps, self.stream, self.ledger, self.flog = cfg, comps, stream, ledger, flog
        self.recovery = recovery
        self.next_batch_id = next_batch_id
        self.batches_per_step = cfg.train.prompts_per_step // cfg.rollout.prompts_per_batch
        self.pending: dict[int, PromptBatch] = {}
        """Issued, not yet trained or dropped (saved in checkpoints, re-put after a crash)."""
        self.got: dict[int, tuple] = {}
        """Batch id -> (ScoredBatch ref, BatchSummary) collected for the current step."""

    def put(self, batch: PromptBatch) -> None:
        """Record `batch` as pending and put it on the prompt queue (blocks while it is full)."""
        self.pending[batch.batch_id] = batch
        try:
            self.comps.put_prompts(batch)
        except ComponentFailure as err:
            self.recovery.recover(self, err)  # re-puts this batch too
        faults.point("kill_queue", batch.batch_id, queue=self.comps.prompt_q)

    def issue(self, num_batches: int) -> None:
        """Take num_batches batches of prompts from the stream, record them, put them."""
        for _ in range(num_batches):
            prompts = self.stream.next_batch(self.cfg.rollout.prompts_per_batch)
            self.ledger.issue(p.prompt_id for p in prompts)
            self.put(PromptBatch(self.next_batch_id, tuple(prompts)))
            self.next_batch_id += 1

    def collect(self, version: int) -> list[tuple[object, BatchSummary]]:
        """One step's (ref, summary) pairs in batch-id order (arrival order is a race).

        A batch sampled by a policy more than max_policy_lag versions behind `version` is
        dropped, counted in the ledger and replaced by a fresh batch."""
        self.got.clear()

        def gather() -> list[tuple]:
            deadline = time.perf_counter() + self.cfg.train.timeout_s
            while len(self.got) < self.batches_per_step:
                ref, s = self.comps.next_scored(deadline)
                if s.batch_id not in self.pending or s.batch_id in self.got:  # a second copy after a recovery
                    self.flog.add("faults/duplicates_dropped")
                    continue
                if version - s.policy_version > self.cfg.train.max_policy_lag:  # too old: drop, count, replace
                    del self.pending[s.batch_id]
                    self.ledger.mark_dropped(s.dropped)
                    self.ledger.mark_dropped((sid, "stale") for sid in s.sample_ids)
                    self.issue(1)
                    continue
                self.got[s.batch_id] = (ref, s)
            return [self.got[b] for b in sorted(self.got)]

        return self.recovery.retrying(self, gather)

    def mark_trained(self, summaries: list[BatchSummary]) -> None:
        """The step's batches are trained: out of `pending`, their samples into the ledger."""
        for s in summaries:
            del self.pending[s.batch_id]
        self.ledger.mark_dropped(d for s in summaries for d in s.dropped)
        self.ledger.mark_trained(sid for s in summaries for sid in s.sample_ids)

    def pending_json(self) -> list[dict]:
        return [batch_to_json(self.pending[b]) for b in sorted(self.pending)]
