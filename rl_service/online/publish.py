"""A version directory -> what the version board publishes: the HF-named state dict and its
PolicyVersion record (checksum, probe logprobs), as the learner publishes a training step's.

The tensors are read from the directory's safetensors file, i.e. exactly what vLLM loads when
it starts from that directory; the probes are their logprobs under the HF engine (transformers), which
every replica compares with its own after loading (rollout/weight_sync.load_verified).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rl_service.rollout.weight_sync import state_dict_bytes, state_dict_checksum
from rl_service.testing import faults
from rl_service.types import PolicyVersion


def load_state_dict(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def version_record(version: int, state_dict: dict[str, torch.Tensor], model_dir: str, probe_texts: list[str]):
    """PolicyVersion of these tensors, probed on `probe_texts`: the HF engine loads them into the
    directory's model (the same `load_weights` a replica runs) and scores the probes."""
    from rl_service.rollout.hf_engine import HFEngine

    engine = HFEngine(model_dir, device="cpu")
    engine.load_weights(state_dict, version)
    probes = [ids for ids in engine.tokenizer(probe_texts)["input_ids"] if len(ids) > 1] if probe_texts else []
    return PolicyVersion(
        version=version,
        checksum=state_dict_checksum(state_dict),
        num_bytes=state_dict_bytes(state_dict),
        probe_ids=tuple(tuple(p) for p in probes),
        probe_logprobs=tuple(tuple(lp) for lp in engine.score(probes)),
    )


def prepare(version: int, model_dir: str, probe_texts: list[str]):
    """(state dict, PolicyVersion) of a version directory. Fault point `bad_version:<version>`:
    the tensors are scrambled first, and the record made of the scrambled ones (a bad deploy)."""
    sd = load_state_dict(model_dir)
    faults.point("bad_version", version, state_dict=sd)
    return sd, version_record(version, sd, model_dir, probe_texts)
