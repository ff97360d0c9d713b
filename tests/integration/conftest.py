"""Shared fixtures for integration tests (real vLLM, real torch.distributed, made small).

Environment: sockets, compile caches and vLLM's cache stay inside the repo (vLLM leaves
ZMQ socket files in $TMPDIR). Set at import, before any test imports vllm or ray.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

os.environ.setdefault("TMPDIR", str(REPO / ".tmp" / "pytest"))
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "inductor"))
Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)


def tiny_model_config():
    """Small, fast model for tests: hidden 64, 2 layers, 2 heads (head_dim 32), 50 SFT steps."""
    from rl_service.config import ModelConfig, SFTConfig, TinyModelConfig

    return ModelConfig(
        cache_dir=str(REPO / ".cache" / "test-models"),
        build=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
        sft=SFTConfig(max_steps=50),
    )


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """HF directory of the test model; built once, then reused from .cache/test-models."""
    from rl_service.config import AdditionConfig
    from rl_service.models.build import ensure_model

    return ensure_model(tiny_model_config(), AdditionConfig(), seed=0, progress=False)


def train_command(*overrides: str, config: Path = REPO / "configs" / "ci" / "tiny.yaml") -> list[str]:
    """`python -m rl_service.cli train CONFIG overrides...`, the command a user runs, for subprocess
    tests of the whole loop (configs/ci/tiny.yaml by default)."""
    return [sys.executable, "-m", "rl_service.cli", "train", str(config), *overrides]


def tagged_sample(prompt_id: int, k: int, prompt_text: str, prompt_ids: tuple, response_ids: tuple):
    """The k-th sample of a prompt as a rollout worker tags it (policy version 0, finished by EOS),
    with engine logprobs of -1: the learner tests' hand-made batches."""
    from rl_service.types import Sample

    return Sample(
        sample_id=f"{prompt_id}/{k}",
        prompt_id=prompt_id,
        prompt_text=prompt_text,
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_logprobs=tuple(-1.0 for _ in response_ids),
        response_text="x",
        policy_version=0,
        finish_reason="stop",
    )
