"""`model:` where the policy comes from: an HF model directory, or the small model built here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rl_service.config.base import Section


class TinyModelConfig(Section):
    """Shape of the small model the project builds itself (random init, then SFT)."""

    architecture: Literal["llama", "qwen2", "gpt2", "mistral"] = "llama"
    """HF architecture of the built model (`AutoConfig.for_model` name). The fields below map
    onto each one's config (GPT-2: n_embd, n_layer, n_head, n_inner, n_positions); word
    embeddings are tied or untied as the architecture defaults (GPT-2 ties them; Llama, Qwen2
    and Mistral do not)."""
    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of decoder blocks."""
    num_heads: int = 4
    """Attention heads (head_dim = hidden_size / num_heads)."""
    intermediate_size: int = 512
    """MLP width."""
    vocab_size: int = 320
    """Target vocabulary of the byte-level BPE tokenizer trained locally."""
    max_position_embeddings: int = 64
    """Longest sequence (prompt + completion) the model supports."""


class SFTConfig(Section):
    """Supervised fine-tuning until a base accuracy is reached: the built model's warm start on
    the addition / guess_number task, and `rl-service sft` on a dataset task (any model)."""

    max_steps: int = Field(3000, ge=0)
    """Upper bound on SFT optimizer steps (0 = keep the random init)."""
    batch_size: int = Field(128, ge=1)
    """Examples per SFT step (split over the learner processes under `rl-service sft`)."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate for SFT."""
    target_accuracy: float = Field(0.3, ge=0, le=1)
    """Stop SFT once held-out greedy accuracy reaches this (leaves RL room to improve): exact
    match on the built-in tasks; on a dataset task the share of eval completions whose reward is
    >= task.success_threshold."""
    eval_every: int = Field(25, ge=1)
    """Steps between held-out accuracy checks during SFT."""


class LoraConfig(Section):
    """LoRA adapters (peft) instead of full fine-tuning: the learner trains only the adapters."""

    r: int = Field(0, ge=0, le=1024)
    """Adapter rank; 0 = off (every weight trained). With r > 0 the reference policy is the base
    model with the adapters switched off (no second copy of the weights), the critic (GAE) gets
    adapters of its own plus its value head, and the rollout engines receive the merged weights."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input, in the gradient passes only (the learner's scoring passes
    and the engines never drop: old and reference logprobs stay those of the sampling policy)."""
    target_modules: list[str] | None = None
    """Leaf names of the modules that get adapters (e.g. [q_proj, v_proj]). None = every linear
    projection inside the decoder blocks: attention and MLP (Llama / Qwen2 / Mistral: q/k/v/o,
    gate/up/down_proj; GPT-2: c_attn, c_proj, c_fc)."""
    sync: Literal["auto", "adapters", "merged"] = "auto"
    """What each weight sync sends the engines. `adapters`: the adapter tensors only (peft format),
    served by vLLM's LoRA layers on the base weights the engines already hold (vLLM and an
    architecture it has LoRA layers for: Llama, Mistral, Qwen2, Qwen3). `merged`: the full
    weights W + (alpha/r) B A (any engine and architecture; the bytes of full fine-tuning).
    `auto`: adapters where every engine of the run (rollout, and Serve when serve.enabled) can
    serve them, merged otherwise. Checksum and probe verification either way."""


class ModelConfig(Section):
    path: str | None = None
    """An HF model directory to start from. None = build the tiny model (cached)."""
    cache_dir: str = ".cache/models"
    """Where built models are saved and reused (key = hash of task+build+sft config)."""
    build: TinyModelConfig = TinyModelConfig()
    """Shape of the built model (ignored when `path` is set)."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters for `rl-service train` (`lora.r` 0 = full fine-tuning)."""
    sft: SFTConfig = SFTConfig()
    """Warm start of the built model (ignored by `train` when `path` is set), and the settings of
    `rl-service sft` (which fine-tunes `path`, or the built model, on a dataset task)."""

    @model_validator(mode="after")
    def _path_exists(self) -> ModelConfig:
        if self.path is not None and not (Path(self.path) / "config.json").is_file():
            raise ValueError(f"model.path: {self.path!r} is not an HF model directory (no config.json)")
        return self
