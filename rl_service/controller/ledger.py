"""The sample ledger: every prompt issued ends as trained, dropped (with a reason), or in flight.

Keyed by sample id (`<prompt_id>/<k>`). The controller records what it issues, what comes
back scored or dropped, and what the learner trained on; `check()` proves the books
balance: nothing lost, nothing trained twice. Pure Python, no Ray.
"""

from __future__ import annotations

from collections import Counter


class LedgerError(RuntimeError):
    """The books do not balance: a sample was lost or trained twice."""


class SampleLedger:
    def __init__(self, samples_per_prompt: int):
        self.n = samples_per_prompt
        self.issued: set[int] = set()
        self.trained: set[str] = set()
        self.dropped: dict[str, str] = {}
        """sample_id -> reason category (`invalid_reward`, `incomplete_group`, `stale`)."""

    def issue(self, prompt_ids) -> None:
        for pid in prompt_ids:
            if pid in self.issued:
                raise LedgerError(f"prompt {pid} issued twice")
            self.issued.add(pid)

    def mark_trained(self, sample_ids) -> None:
        for sid in sample_ids:
            self._check_known(sid)
            if sid in self.trained or sid in self.dropped:
                raise LedgerError(f"sample {sid} trained twice (or after being dropped)")
            self.trained.add(sid)

    def mark_dropped(self, items) -> None:
        """items: iterable of (sample_id, reason); the reason's first word is its category."""
        for sid, reason in items:
            self._check_known(sid)
            if sid in self.trained or sid in self.dropped:
                raise LedgerError(f"sample {sid} dropped after it was already settled")
            self.dropped[sid] = reason.split(":")[0].strip()

    def _check_known(self, sid: str) -> None:
        pid, _, k = sid.partition("/")
        if int(pid) not in self.issued or not 0 <= int(k) < self.n:
            raise LedgerError(f"sample {sid} was never issued")

    def counts(self) -> dict[str, int]:
        by_reason = Counter(self.dropped.values())
        expected = len(self.issued) * self.n
        settled = len(self.trained) + len(self.dropped)
        # In flight = samples of prompts not settled yet; lost would be anything else.
        settled_prompts = Counter(int(s.split("/")[0]) for s in self.trained | set(self.dropped))
        in_flight = (len(self.issued) - len(settled_prompts)) * self.n
        return {
            "samples/issued": expected,
            "samples/trained": len(self.trained),
            "samples/dropped_stale": by_reason.get("stale", 0),
            "samples/dropped_invalid": by_reason.get("invalid_reward", 0) + by_reason.get("incomplete_group", 0),
            "samples/in_flight": in_flight,
            # a prompt settled only in part has lost the rest of its samples
            "samples/lost": expected - settled - in_flight,
        }

    def state_dict(self) -> dict:
        """JSON-ready books, for checkpoints: a resumed run's books keep balancing."""
        return {
            "n": self.n,
            "issued": sorted(self.issued),
            "trained": sorted(self.trained),
            "dropped": dict(sorted(self.dropped.items())),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise LedgerError(f"checkpoint ledger has {state['n']} samples per prompt, this run {self.n}")
        self.issued = {int(p) for p in state["issued"]}
        self.trained = set(state["trained"])
        self.dropped = dict(state["dropped"])

    def check(self) -> dict[str, int]:
        """Raise if any sample is unaccounted for; return the counts."""
        c = self.counts()
        if c["samples/lost"]:
            raise LedgerError(f"{c['samples/lost']} samples lost: {c}")
        return c
