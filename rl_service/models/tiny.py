"""A tiny causal LM built from config (random init, fp32): Llama, Qwen2, GPT-2 or Mistral."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from rl_service.config import TinyModelConfig
from rl_service.models.tokenizer import DEFAULT_CHAT_TEMPLATE, build_tokenizer

ARCHITECTURE_NAMES = {"llama": "Llama", "qwen2": "Qwen2", "gpt2": "GPT-2", "mistral": "Mistral"}
"""Display name of each `model.build.architecture`."""


def padded_vocab_size(tokenizer: PreTrainedTokenizerBase, multiple: int = 8) -> int:
    """len(tokenizer) rounded up to a multiple of 8 (the extra rows are never produced by the tokenizer)."""
    n = len(tokenizer)
    return (n + multiple - 1) // multiple * multiple


def _shape_fields(cfg: TinyModelConfig) -> dict:
    """TinyModelConfig's shape in the architecture's own config field names."""
    if cfg.architecture == "gpt2":
        return dict(
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_position_embeddings,
        )
    fields = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,  # plain MHA
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
    )
    if cfg.architecture == "llama":
        fields["tie_word_embeddings"] = False  # explicit, as the model was always built
    return fields


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The HF config of the tiny model: `cfg`'s shape, the tokenizer's vocab and special ids, fp32."""
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    return AutoConfig.for_model(
        cfg.architecture,
        vocab_size=padded_vocab_size(tokenizer),
        dtype="float32",
        **_shape_fields(cfg),
        **_special_ids(tokenizer),
    )


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict:
    return dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Random-init causal LM of `cfg.architecture` in fp32. Seed torch before calling for a reproducible init."""
    config = tiny_config(cfg, tokenizer)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).to(torch.float32)
    model.generation_config = GenerationConfig(**_special_ids(tokenizer))
    return model


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_random_model(
    out_dir: str | Path,
    cfg: TinyModelConfig,
    corpus: Iterable[str],
    vocab_size: int = 320,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    seed: int = 0,
) -> Path:
    """Write a random-init tiny model of `cfg.architecture` and its tokenizer (trained on `corpus`,
    with `chat_template`) as an HF directory that `model.path` accepts -> `out_dir`."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(corpus, vocab_size, chat_template=chat_template)
    with torch.random.fork_rng(devices=[]):  # seeded init without clobbering the caller's RNG
        torch.manual_seed(seed)
        model = build_tiny_model(cfg, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
