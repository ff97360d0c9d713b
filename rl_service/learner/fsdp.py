"""FSDP2 plumbing: process group, device mesh, sharding, full-state-dict gather.

FSDP2 (`fully_shard`) is used rather than FSDP1: on CPU, FSDP1 segfaults on a
full-state-dict gather with cpu_offload (measured here), FSDP2 does not. Every function
that communicates must be called by every rank, in the same order.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def resolve_backend(backend: str) -> str:
    """ "auto" -> nccl when this process sees a GPU, else gloo."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("learner.backend=nccl but this process sees no GPU")
    return backend


def local_device(backend: str, rank: int) -> torch.device:
    """cuda:<local rank> under nccl (Ray gives each process its own visible GPU -> 0), else cpu."""
    if backend != "nccl":
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(
    backend: str, rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float = 600.0
) -> tuple[torch.device, DeviceMesh]:
    """Join the process group (tcp:// rendezvous) and build a 1-D data-parallel mesh."""
    device = local_device(backend, rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))
    return device, mesh


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a model, whatever its architecture, in module order.

    HF models name their block classes in `_no_split_modules` (Llama: LlamaDecoderLayer,
    GPT-2: GPT2Block); the outermost modules of those classes are the blocks. A model that
    names none falls back to its longest ModuleList of same-class children (the layer stack).
    """
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    blocks: list[nn.Module] = []
    inside: set[int] = set()  # ids of modules under a block already taken
    for m in model.modules():
        if id(m) in inside:
            continue
        if type(m).__name__ in names:
            blocks.append(m)
            inside.update(id(sub) for sub in m.modules())
    if blocks:
        return blocks
    stacks = [
        m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    if not stacks:
        raise TypeError(f"{type(model).__name__}: no decoder blocks found (no _no_split_modules, no ModuleList)")
    return list(max(stacks, key=len))


def shard(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """fully_shard each decoder block, then the root (embeddings, final norm, heads).

    Per-block units let FSDP gather one block at a time instead of the whole model.
    """
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module, every_rank: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded fp state dict with the model's own (HF) parameter names.

    Collective: every rank must call. Default: rank 0 gets the tensors on CPU, the others an
    empty dict. every_rank: every rank gets them (an all-gather of each parameter's
    `full_tensor()`), on the model's device: the colocated handover, where each rank feeds the
    engine in its own process. The tensors are a snapshot: with one rank the gather returns the
    live parameters themselves (measured), so they are cloned there, or the next optimizer step
    would change a published version behind its checksum.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
    state_dict = get_model_state_dict(model, options=options)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        state_dict = {k: v.detach().clone() for k, v in state_dict.items()}
    return state_dict


def full_parameters(model: nn.Module, keep, every_rank: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded copies (on CPU) of the state-dict entries whose name `keep(name)` accepts, e.g.
    LoRA adapters only: the rest of the model is never gathered. Collective (one all-gather per
    kept DTensor, every rank in name order); rank 0 gets the tensors, the others an empty dict
    unless `every_rank`."""
    out = {}
    for name, t in full_tensors(model, keep):
        if every_rank or not dist.is_initialized() or dist.get_rank() == 0:
            out[name] = t.cpu().clone()
    return out


def full_tensors(model: nn.Module, keep=None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, unsharded tensor) of every state-dict entry in name order, one at a time: the
    streamed weight sync's source (the model is never gathered whole). Collective: every rank
    iterates to the end (each DTensor's `full_tensor()` is an all-gather). With one rank a
    tensor may be the live parameter itself: clone it to keep it past the next optimizer step."""
    state = model.state_dict()  # FSDP2: DTensor shards of the parameters, plain buffers
    for name in sorted(n for n in state if keep is None or keep(n)):
        t = state[name]
        yield name, (t.full_tensor() if isinstance(t, DTensor) else t).detach()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks (no-op without a process group of more than one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_metrics(metrics: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """SUM of each named scalar over ranks (every rank passes the same names). Packed into one
    float64 tensor in sorted-name order, so every rank lays the names out alike whatever order
    its dict was built in; unpacked by name."""
    names = sorted(metrics)
    packed = torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64, device=device)
    return dict(zip(names, all_reduce_sum(packed).tolist()))


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s python object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip by the global norm over all ranks' shards; returns the pre-clip norm (may be nan/inf).

    FSDP2 grads are DTensors: the norm comes back as a DTensor, `.full_tensor()` makes it a
    plain (replicated) scalar.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
