"""An HF model directory from a full state dict: what `save_hf` of the PPO learner and of the
SFT learner (rl_service/sft/learner.py) writes, so `model.path` accepts either's output.

    save_hf(model, source_dir, out_dir, rank)       collective: gather the sharded model, rank 0 writes
    write_hf_dir(state_dict, source_dir, out_dir)   the writing itself, from a full state dict
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from rl_service.learner import fsdp

# Tokenizer and generation files of the source directory, copied as is so the exported
# directory tokenizes exactly like the source.
COPIED_PREFIXES = (
    "tokenizer",
    "special_tokens_map",
    "added_tokens",
    "vocab",
    "merges",
    "chat_template",
    "generation_config",
)


def write_hf_dir(state_dict: dict[str, torch.Tensor], source_dir: str, out_dir: str) -> None:
    """config + safetensors of `state_dict` (HF names, full tensors) under the source model's
    config, plus the source's tokenizer / chat template / generation files, into `out_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(source_dir)
    for f in src.iterdir():  # tokenizer, generation config, chat template...
        if f.is_file() and f.name.startswith(COPIED_PREFIXES):
            shutil.copy2(f, out / f.name)
    config = AutoConfig.from_pretrained(source_dir)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(state_dict, strict=True)
    plain.save_pretrained(out)


def save_hf(model: nn.Module, source_dir: str, out_dir: str, rank: int) -> None:
    """Gather the FSDP2-sharded `model` and have rank 0 write it with write_hf_dir; collective.
    Every rank returns only once the directory is complete."""
    state_dict = fsdp.full_state_dict(model)
    if rank == 0:
        write_hf_dir(state_dict, source_dir, out_dir)
    fsdp.barrier()
