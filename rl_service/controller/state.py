"""The state one training run's stages share, and the part of it a checkpoint saves.

    RunState        step, policy version, accuracy, the batch pipeline (and through it the
                    prompt stream and the sample ledger)
    load_resumable  a checkpoint's controller state, refused if the config differs where it matters

The learners' own state (weights, optimizers, RNG) is saved by the learners themselves beside
it (rl_service/controller/checkpoint.py lays the files out). Pure Python, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rl_service.config import Config
from rl_service.controller import checkpoint
from rl_service.controller.ledger import SampleLedger
from rl_service.controller.pipeline import BatchPipeline
from rl_service.tasks import PromptStream

# Config keys that must match between a checkpoint and the run resuming from it.
MUST_MATCH = ("seed", "task", "rollout.samples_per_prompt", "rollout.prompts_per_batch", "train.prompts_per_step")


@dataclass
class RunState:
    pipe: BatchPipeline
    """Batches issued and not yet trained; owns the prompt stream and the sample ledger."""
    step: int = 0
    """Steps completed (the one being worked on is step + 1)."""
    version: int = 0
    """Policy version of the newest weights (= steps trained; the workers have it once synced)."""
    accuracy_start: float = float("nan")
    accuracy: float = float("nan")
    """Held-out accuracy at the start of the run and at its latest evaluation."""
    eval_start: dict[str, float] = field(default_factory=dict)
    """Every held-out metric of the start evaluation (`eval/accuracy`, `eval/rouge_l`, ...)."""
    resumed_from: int | None = None
    """The checkpoint step this attempt started from, None for a fresh start."""
    last_saved: int = -1
    """Step of the newest checkpoint this attempt wrote or started from (-1: none)."""

    @property
    def stream(self) -> PromptStream:
        return self.pipe.stream

    @property
    def ledger(self) -> SampleLedger:
        return self.pipe.ledger

    def restore(self, saved: dict) -> None:
        """Continue where the checkpoint's controller state `saved` stopped (its pending
        batches are put again by the caller, once the loops run)."""
        self.stream.load_state_dict(saved["stream"])
        self.ledger.load_state_dict(saved["ledger"])
        self.pipe.next_batch_id = saved["next_batch_id"]
        self.step = self.resumed_from = self.last_saved = saved["step"]
        self.version = saved["policy_version"]
        self.accuracy_start, self.accuracy = saved["accuracy_start"], saved["accuracy"]
        self.eval_start = saved.get("eval_start", {"eval/accuracy": self.accuracy_start})

    def controller_state(self, learner_info: dict, cfg: Config) -> dict:
        """What controller.json holds: everything the driver owns at this step boundary."""
        return {
            "step": self.step,
            "policy_version": self.version,
            "next_batch_id": self.pipe.next_batch_id,
            "stream": self.stream.state_dict(),
            "ledger": self.ledger.state_dict(),
            "pending": self.pipe.pending_json(),
            "accuracy_start": self.accuracy_start,
            "eval_start": self.eval_start,
            "accuracy": self.accuracy,
            "learner": learner_info,
            "config": cfg.model_dump(mode="json"),
        }


def _pick(cfg_dump: dict, key: str):
    for part in key.split("."):
        cfg_dump = cfg_dump[part]
    return cfg_dump


def _same(now, then) -> bool:
    """Equal in every field today's config has. Keys only the checkpoint has are ignored: a
    checkpoint of the older flat layout also dumped the other task variant's (unused) fields."""
    if isinstance(now, dict) and isinstance(then, dict):
        return all(k in then and _same(v, then[k]) for k, v in now.items())
    return now == then


def load_resumable(ckpt: Path | None, cfg: Config) -> dict | None:
    """The controller state of checkpoint `ckpt` (None for a fresh start); CheckpointError if
    `cfg` differs from the checkpoint's config in a key of MUST_MATCH."""
    if ckpt is None:
        return None
    saved = checkpoint.load_controller_state(ckpt)
    now = cfg.model_dump(mode="json")
    bad = [k for k in MUST_MATCH if not _same(_pick(now, k), _pick(saved["config"], k))]
    if bad:
        raise checkpoint.CheckpointError(f"{ckpt}: config differs from the checkpoint's in {bad}")
    return saved
