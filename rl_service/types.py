"""Frozen records that cross the queues between components.

Queues carry object refs to these batches, never per-token items. Every sample carries
its `sample_id` (``"<prompt_id>/<k>"``) and the `policy_version` of the weights that
produced it, so the controller can account for each prompt and bound staleness.
No ray, vllm or torch imports here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    """Position in the prompt stream (unique per run; the ledger key)."""
    text: str
    """Prompt string fed to the engine, e.g. `37+48=`."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Task data handed to the reward function as keyword args (e.g. `answer`)."""


@dataclass(frozen=True)
class PromptBatch:
    batch_id: int
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Sample:
    sample_id: str
    """`<prompt_id>/<k>` for the k-th completion of a prompt."""
    prompt_id: int
    prompt_text: str
    prompt_ids: tuple[int, ...]
    """Prompt token ids exactly as the engine saw them (BOS included)."""
    response_ids: tuple[int, ...]
    """Generated token ids as generated (EOS included when produced): no re-tokenisation."""
    response_logprobs: tuple[float, ...]
    """Engine logprob of each generated token, same length as response_ids."""
    response_text: str
    """Decoded completion (special tokens skipped) given to the reward function."""
    policy_version: int
    """Version of the weights that generated this sample."""
    finish_reason: str
    """`stop` (EOS) or `length` (hit max_new_tokens)."""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutBatch:
    batch_id: int
    samples: tuple[Sample, ...]
    """All completions of every prompt in the PromptBatch, grouped by prompt."""
    worker: str
    policy_version: int
    generate_s: float
    """Wall seconds the engine spent generating this batch."""


@dataclass(frozen=True)
class ScoredBatch:
    batch_id: int
    samples: tuple[Sample, ...]
    """Samples that got a valid reward (invalid ones are listed in `dropped`)."""
    rewards: tuple[float, ...]
    """One finite reward per kept sample."""
    dropped: tuple[tuple[str, str], ...]
    """(sample_id, reason) for samples whose reward function raised or returned junk."""
    policy_version: int
    generate_s: float
    reward_s: float


@dataclass(frozen=True)
class BatchSummary:
    """What the controller needs from a ScoredBatch without fetching its tokens."""

    batch_id: int
    prompt_ids: tuple[int, ...]
    sample_ids: tuple[str, ...]
    """Ids of the samples kept (scored) in the batch."""
    dropped: tuple[tuple[str, str], ...]
    """(sample_id, reason) dropped by the scorer."""
    policy_version: int
    """Version that generated the batch (one engine call, one version)."""
    num_response_tokens: int
    generate_s: float
    reward_s: float

    @staticmethod
    def of(batch: "ScoredBatch") -> "BatchSummary":
        versions = {s.policy_version for s in batch.samples}
        return BatchSummary(
            batch_id=batch.batch_id,
            prompt_ids=tuple(sorted({s.prompt_id for s in batch.samples}
                                    | {int(sid.split("/")[0]) for sid, _ in batch.dropped})),
            sample_ids=tuple(s.sample_id for s in batch.samples),
            dropped=batch.dropped,
            policy_version=min(versions) if versions else batch.policy_version,
            num_response_tokens=sum(len(s.response_ids) for s in batch.samples),
            generate_s=batch.generate_s, reward_s=batch.reward_s)


@dataclass(frozen=True)
class PolicyVersion:
    """A published set of weights: what the learner hands to weight sync."""

    version: int
    checksum: str
    """Hash of the full state dict (names, shapes, bytes) as published."""
    num_bytes: int
    probe_ids: tuple[tuple[int, ...], ...] = ()
    """Fixed token sequences the engines score after loading to verify the weights."""
    probe_logprobs: tuple[tuple[float, ...], ...] = ()
    """Learner logprob of probe token t+1 given tokens <= t, per probe sequence."""
