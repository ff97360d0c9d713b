"""LoRA adapters on the learner's models (model.lora), with peft.

    peft_cfg = peft_config(lora_cfg, model)   peft's LoraConfig (default targets: the blocks' projections)
    layers = add_adapters(model, peft_cfg)    inject adapters (peft), freeze everything else;
                                              -> {module name: fan_in_fan_out} of the adapted layers
    AdaptersOff(policy)                       the reference: the same modules, adapters switched off
    merged = merged_state_dict(sd, layers, s) HF-named full weights W + s * B @ A (model.lora.sync=merged)
    peft_named(adapter_tensors(sd))           the adapters under peft's names (model.lora.sync=adapters)
    write_adapter_dir(sd, lora_cfg, base, out) the adapters as a peft directory (PeftModel.from_pretrained)

The adapters are injected into the HF model itself (`inject_adapter_in_model`), not wrapped in a
PeftModel: module names, FSDP2's per-block sharding and the packed-attention patch stay those of
the plain model, and a state dict differs only where a layer got adapters:
`<layer>.weight` -> `<layer>.base_layer.weight` + `<layer>.lora_A.default.weight` [r, in] +
`<layer>.lora_B.default.weight` [out, r] (GPT-2's Conv1D stores weights [in, out]: fan_in_fan_out).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from torch import Tensor, nn

ADAPTER = "default"


def default_targets(model: nn.Module) -> list[str]:
    """Leaf names of every linear projection inside the decoder blocks (attention and MLP)."""
    from transformers.pytorch_utils import Conv1D

    from rl_service.learner.fsdp import decoder_layers

    names = {
        name.rsplit(".", 1)[-1]
        for block in decoder_layers(model)
        for name, m in block.named_modules()
        if isinstance(m, (nn.Linear, Conv1D))
    }
    return sorted(names)


def add_adapters(model: nn.Module, peft_cfg) -> dict[str, bool]:
    """Inject LoRA adapters (peft_cfg: `peft_config(model.lora, model)`, made before) into
    `model` in place and make them its only trainable parameters. Returns {module name:
    fan_in_fan_out} of every adapted layer."""
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    mode = model.training
    inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    model.train(mode)  # new modules start in training mode; the model's own mode applies to them too
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return {n: bool(m.fan_in_fan_out) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def peft_config(lora_cfg, model: nn.Module, base_path: str | None = None):
    """peft's LoraConfig for the plain `model` (targets: model.lora.target_modules or
    default_targets); ValueError naming a target the model does not have."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    targets = lora_cfg.target_modules or default_targets(model)
    leaves = {n.rsplit(".", 1)[-1]: m for n, m in model.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise ValueError(f"model.lora.target_modules: no module named {missing} in {type(model).__name__}")
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=any(isinstance(leaves[t], Conv1D) for t in targets),  # GPT-2: weights [in, out]
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_path,
    )


@contextmanager
def adapters_disabled(model: nn.Module):
    """Within: every LoRA layer of `model` computes its base layer only."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


@contextmanager
def adapter_dropout(model: nn.Module, on: bool = True):
    """Within: the adapters' dropout modules are in training mode (the rest of the model stays in
    eval mode, so its own dropout, if any, stays off)."""
    drops = [m for n, m in model.named_modules() if n.endswith(f"lora_dropout.{ADAPTER}")]
    for m in drops:
        m.train(on)
    try:
        yield
    finally:
        for m in drops:
            m.train(False)


class AdaptersOff(nn.Module):
    """The reference policy of a LoRA run: the policy's own modules with its adapters off.

    Holds the policy outside the module tree (not a submodule), so its parameters are not
    registered twice; calls go straight to the policy."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.__dict__["_policy"] = policy

    def forward(self, *args, **kwargs):
        with adapters_disabled(self._policy):
            return self._policy(*args, **kwargs)


def scaling(lora_cfg) -> float:
    return lora_cfg.alpha / lora_cfg.r


def merged_state_dict(state_dict: dict[str, Tensor], layers: dict[str, bool], scale: float) -> dict[str, Tensor]:
    """HF names and full weights of the adapted model: each adapted layer's
    `base_layer.weight` + scale * B @ A (transposed for fan_in_fan_out layers), adapter tensors
    dropped, every other tensor as it is."""
    out = {}
    for name, t in state_dict.items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            out[name] = t
            continue
        layer, leaf = name.split(".base_layer.", 1)
        if leaf == "weight" and layer in layers:
            a = state_dict[f"{layer}.lora_A.{ADAPTER}.weight"]  # [r, in]
            b = state_dict[f"{layer}.lora_B.{ADAPTER}.weight"]  # [out, r]
            delta = (b.float() @ a.float()) * scale  # [out, in]
            t = t + (delta.T if layers[layer] else delta).to(t.dtype)
        out[f"{layer}.{leaf}"] = t
    return out


def adapter_tensors(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter part of a state dict (what LoRA actually trains)."""
    return {k: v for k, v in state_dict.items() if ".lora_" in k}


def peft_named(adapters: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapter tensors under peft's file names: `<layer>.lora_A.default.weight` ->
    `base_model.model.<layer>.lora_A.weight` (what adapter_model.safetensors holds, and vLLM loads)."""
    return {"base_model.model." + k.replace(f".{ADAPTER}.", "."): v for k, v in adapters.items()}


def config_json(peft_cfg) -> str:
    """adapter_config.json's text for `peft_cfg` (what `save_pretrained` writes)."""
    import json

    d = peft_cfg.to_dict()
    return json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}, indent=2, sort_keys=True)


def write_adapter_dir(state_dict: dict[str, Tensor], peft_cfg, out_dir: str | Path) -> None:
    """The adapters as a peft directory (adapter_config.json + adapter_model.safetensors) that
    `PeftModel.from_pretrained(base, out_dir)` loads onto the base model: the same files, by the
    same writer, as an engine makes of a published adapter version (model.lora.sync=adapters)."""
    from rl_service.rollout.adapters import write_adapter_files

    write_adapter_files(peft_named(adapter_tensors(state_dict)), config_json(peft_cfg), out_dir)
