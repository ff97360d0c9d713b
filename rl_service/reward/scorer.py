"""RewardScorer actor body: pull RolloutBatch refs, score every sample, push ScoredBatch refs.

A sample whose reward function raises or returns junk is never scored 0: with
`on_error: drop` it is listed in `ScoredBatch.dropped` with its sample id and reason;
with `on_error: fail` the batch fails with an error naming the sample.
"""

from __future__ import annotations

import time

from rl_service.config import RewardConfig
from rl_service.reward.functions import InvalidReward, checked_reward, resolve_reward_fn
from rl_service.types import BatchSummary, RolloutBatch, ScoredBatch


class RewardFunctionError(RuntimeError):
    """Raised under `on_error: fail`; the message names the sample and the batch."""


class RewardScorer:
    def __init__(self, cfg: RewardConfig, name: str = "reward-0", whole_groups: bool = False):
        """`whole_groups`: group estimators (GRPO, RLOO...) need every completion of a prompt,
        so one dropped sample drops its siblings too (reason `incomplete_group`)."""
        self.cfg = cfg
        self.name = name
        self.whole_groups = whole_groups
        self.fn = resolve_reward_fn(cfg.fn)
        self._stop = False

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        start = time.perf_counter()
        kept, rewards, dropped = [], [], []
        for s in batch.samples:
            try:
                r = checked_reward(self.fn, s.prompt_text, s.response_text, s.metadata)
            except InvalidReward as err:
                if self.cfg.on_error == "fail":
                    raise RewardFunctionError(
                        f"reward.fn {self.cfg.fn!r} on sample {s.sample_id} (batch {batch.batch_id}): {err}") from None
                dropped.append((s.sample_id, f"invalid_reward: {err}"))
                continue
            kept.append(s)
            rewards.append(r)
        if self.whole_groups and dropped:
            bad = {sid.split("/")[0] for sid, _ in dropped}
            keep = [i for i, s in enumerate(kept) if str(s.prompt_id) not in bad]
            dropped += [(kept[i].sample_id, "incomplete_group") for i in range(len(kept)) if i not in set(keep)]
            kept, rewards = [kept[i] for i in keep], [rewards[i] for i in keep]
        return ScoredBatch(batch_id=batch.batch_id, samples=tuple(kept), rewards=tuple(rewards),
                           dropped=tuple(dropped), policy_version=batch.policy_version,
                           generate_s=batch.generate_s, reward_s=time.perf_counter() - start)

    def run(self, rollout_q, scored_q, poll_s: float = 0.2) -> int:
        """Loop: pull a RolloutBatch, score it, push (ScoredBatch ref, BatchSummary). Returns
        the number of batches scored once `stop()` is called."""
        done = 0
        while not self._stop:
            batch = rollout_q.get(timeout=poll_s)
            if batch is None:
                continue
            scored = self.score(batch)
            scored_q.put(scored, BatchSummary.of(scored))
            done += 1
        return done

    def stop(self) -> None:
        self._stop = True
