"""Facts read from an HF model directory's config.json, whatever the architecture names them.

Read from the JSON itself (no transformers import), so rollout workers and serving replicas
can ask before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTEXT_KEYS = (
    "max_position_embeddings",  # Llama, Qwen2, Mistral, most
    "n_positions",  # GPT-2
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
"""Config keys that name the context length, in the order vLLM consults them."""
DEFAULT_CONTEXT = 2048
"""What vLLM assumes when a config names no context length."""


def read_config(model_path: str | Path) -> dict[str, Any]:
    """config.json of an HF model directory as a dict."""
    return json.loads((Path(model_path) / "config.json").read_text())


def context_length(config: str | Path | Mapping[str, Any]) -> int:
    """Longest sequence (prompt + completion) the model takes: the first of CONTEXT_KEYS in the
    config (or its `text_config`, for models that nest the language model's), else DEFAULT_CONTEXT.
    `config`: a model directory or its config.json as a dict."""
    cfg = read_config(config) if isinstance(config, (str, Path)) else config
    for section in (cfg, cfg.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_CONTEXT
