"""`rl-service online`: the service config. A training config (`Config`: the policy, rollout
workers, scorers, learner and `serve:` sections of every PPO round) plus `preference:` (how the
reward model is refitted) and `online:` (when to refit, how many PPO steps, what guards a
version must pass). configs/online.yaml is the example; docs/serving.md "The online loop"."""

from __future__ import annotations

from pydantic import Field, model_validator

from rl_service.config.base import Section
from rl_service.config.model import ModelConfig
from rl_service.config.preference import RMTrainConfig
from rl_service.config.run import Config


class OnlineConfig(Section):
    rm_every: int = Field(64, ge=1)
    """New preference pairs in the feedback store between reward-model refits (each refit is
    followed by a PPO round): the loop's trigger."""
    ppo_steps: int = Field(8, ge=1)
    """PPO steps per round (`train.steps` of the round), against the adopted reward model."""
    rm_model: ModelConfig | None = None
    """Where the FIRST reward model starts (later refits warm-start from the adopted one).
    None = the policy's model. A backbone that can do the task helps (configs/rm.yaml)."""
    min_accuracy: float = Field(0.5, ge=0, le=1)
    """A first reward model is adopted only above this held-out pairwise accuracy (0.5 =
    chance); a refit only when its held-out accuracy is not below the adopted one's on the same
    held-out pairs."""
    task_prompts: int = Field(0, ge=0)
    """Prompts of `task` (its training split) added to the store's prompts in every round;
    0 = only what users asked."""
    min_prompts: int = Field(8, ge=1)
    """A round runs only once the store holds this many distinct training prompts (+ task_prompts)."""
    canary_prompts: int = Field(32, ge=1)
    """Held-out prompts (users' prompts on the held-out side of the prompt hash, which neither
    the reward model nor PPO trains on) answered greedily for the checks: at most this many."""
    canary_margin: float = Field(0.25, ge=0)
    """Held-out check, in reward-model score units (a Bradley-Terry logit: 0.25 = the other
    answer preferred ~56% of the time). Before publishing: the candidate's mean score on the
    canary prompts must not fall below the served version's by more than this. After the swap:
    the endpoint's answers must score within this of what was checked, else it is rolled back."""
    min_live_agreement: float = Field(0.75, ge=0, le=1)
    """After the swap: the fraction of canary prompts the endpoint must answer exactly as the
    checked candidate did (greedy both; vLLM and transformers agree up to rare near-ties). A
    version that verified but answers otherwise (a bad deploy) is rolled back."""
    max_kl: float = Field(0.5, gt=0)
    """Guard: the round's largest `kl/mean` (per token, to the served version it started from)."""
    max_reward_drop: float = Field(1.0, ge=0)
    """Guard: the round's last-step `reward/mean` may not fall below its first by more than
    this many first-step reward std (a collapsing reward)."""
    poll_s: float = Field(2.0, gt=0)
    """How often the feedback store and operator requests are read."""
    swap_timeout_s: float = Field(180.0, gt=0)
    """How long every live replica may take to load a published version before it counts as failed."""
    round_timeout_s: float = Field(1800.0, gt=0)
    """A refit or PPO round still running after this is stopped and counts as failed."""


class OnlineRunConfig(Config):
    """Top-level config of `rl-service online`."""

    name: str = "online"
    """Run name: the service's state, versions, rounds and metrics go to `<run_root>/<name>/`."""
    preference: RMTrainConfig = RMTrainConfig(steps=100, batch_size=32, eval_every=50, eval_fraction=0.2)
    """Each refit of the reward model (`rl-service train-rm` on all feedback so far), noise
    handling (`preference.noise`) included."""
    online: OnlineConfig = OnlineConfig()
    """The loop: refit trigger, PPO steps, guards."""

    @model_validator(mode="after")
    def _online(self) -> OnlineRunConfig:
        if self.serve.enabled:
            raise ValueError("serve.enabled: the online service serves the policy itself; leave it false")
        if self.placement != "split":
            raise ValueError("placement: the online service serves from its own replica; use placement: split")
        return self
