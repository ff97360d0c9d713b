"""The context length of an HF model directory, whatever its config calls it."""

from __future__ import annotations

import json
from pathlib import Path

# Llama / Qwen2 / Mistral: max_position_embeddings; GPT-2: n_positions; some others: n_ctx.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def context_length(model_path: str | Path, default: int = 2048) -> int:
    """Longest sequence (prompt + completion) the model at `model_path` supports."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    for key in _CONTEXT_KEYS:
        if isinstance(config.get(key), int):
            return int(config[key])
    return default
