"""`preference:` training from preference pairs {prompt, chosen, rejected}, by `type`:
`rm` (a Bradley-Terry reward model, `rl-service train-rm`) or `dpo` (`rl-service train-dpo`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rl_service.config.base import Section


class _PairTraining(Section):
    num_train_pairs: int = Field(3000, ge=1)
    """Synthetic task only: training pairs generated from the addition task's training split
    (held-out pairs come from its held-out prompts, task.num_eval of them)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Pairs from a file or the feedback database: this fraction is held out, chosen by a hash
    of the prompt (deterministic; every pair of one prompt lands on the same side)."""
    num_workers: int = Field(1, ge=1)
    """FSDP2 processes (torch.multiprocessing, gloo on CPU / NCCL on GPU); 1 = in this process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl when a GPU is visible, else gloo."""
    steps: int = Field(300, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(64, ge=1)
    """Pairs per optimizer step (over all processes)."""
    lr: float = Field(3e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_steps: int = Field(10, ge=0)
    """Linear learning-rate warmup."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping by global norm."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Probability that a label is flipped (noisy preferences): the conservative Bradley–Terry /
    cDPO loss; 0 = plain NLL. With noise=annotators: the least smoothing any pair gets."""
    noise: Literal["smoothing", "annotators"] = "smoothing"
    """How noisy labels are handled (rl_service/preference/noise.py). `smoothing`: every row
    trains as given, each label smoothed by `label_smoothing`. `annotators`: rows carry an
    `annotator` id; the rows about one item (a prompt and the same two completions) are votes,
    each annotator's accuracy is estimated from their agreement (one-coin Dawid–Skene EM), and
    each item trains once, oriented by its posterior, smoothed by 1 - its confidence."""
    eval_every: int = Field(50, ge=1)
    """Steps between held-out evaluations."""
    threads: int = Field(1, ge=1)
    """torch intra-op threads per process."""


class RMTrainConfig(_PairTraining):
    """A reward model: the policy's backbone with a 1-output head, Bradley-Terry loss."""

    type: Literal["rm"] = "rm"
    """`rm`: train a reward model (`rl-service train-rm`)."""
    margin: float = Field(0.0, ge=0)
    """The chosen reward must beat the rejected one by this margin."""
    rm_extra_layers: int = Field(0, ge=0)
    """Decoder layers added on top of the policy's, initialised as the identity
    (experimental; 2 extra layers gave no measured gain on the synthetic task)."""
    rm_lm_coef: float = Field(0.0, ge=0)
    """Weight of an auxiliary next-token loss on the chosen completions, through the
    policy's LM head on the reward model's backbone (dropped when saving); 0 = off."""


class DPOTrainConfig(_PairTraining):
    """Direct preference optimisation of the policy against a frozen reference copy."""

    type: Literal["dpo"] = "dpo"
    """`dpo`: train the policy directly (`rl-service train-dpo`)."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL to the frozen reference."""


# What only one kind has: a section without `type` (the old layout, shared by both commands)
# loads for either command, the other kind's fields ignored as they were then.
RM_ONLY_FIELDS = frozenset(RMTrainConfig.model_fields) - frozenset(_PairTraining.model_fields) - {"type"}
DPO_ONLY_FIELDS = frozenset(DPOTrainConfig.model_fields) - frozenset(_PairTraining.model_fields) - {"type"}

PreferenceConfig = Annotated[RMTrainConfig | DPOTrainConfig, Field(discriminator="type")]
"""The variant named by `preference.type`; the command (train-rm / train-dpo) sets it when absent."""
