"""PPO learner on FSDP2: batching (pure), FSDP plumbing, forward passes, prepare (old/ref
logprobs, values, KL, advantages on the global batch), update (epochs x minibatches), the
per-process Learner.

`Learner` is imported lazily so that `rl_service.learner.batching` stays a pure-torch
import (layering rule 1).
"""

from __future__ import annotations

__all__ = ["Learner"]


def __getattr__(name: str):
    if name == "Learner":
        from rl_service.learner.learner import Learner

        return Learner
    raise AttributeError(name)
