"""Reading checkpoint files without running what is in them.

A checkpoint directory may come from elsewhere (`--resume PATH`, a copied run), and both of
its pickled parts could run code when loaded: `learner_rank<r>.pt` (torch.save) and the DCP
`.metadata` file (torch.distributed.checkpoint pickles it and reads it back with a plain
`pickle.load`). So:

    read_local_state(path)      torch.load(weights_only=True): tensors, numbers, strings,
                                lists, tuples and dicts only
    check_dcp_metadata(dir)     walks `<dir>/.metadata` with an unpickler that builds only
                                DCP's own metadata classes and torch's dtype / Size / layout
                                values; anything else is refused before DCP reads the file

Both raise UnsafeCheckpoint (one line naming the file and what it asked for). What is left to
trust is the tensor payload itself (DCP shards are raw bytes read into allocated tensors).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

DCP_METADATA = ".metadata"
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file asks for more than plain data: it is not loaded."""


def read_local_state(path: Path) -> dict[str, Any]:
    """The per-rank state a learner saved with torch.save (step, schedules, RNG tensors)."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpoint(f"{path}: not plain tensors and data, refusing to load it ({first})") from None


class _MetadataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # a dataclass / enum of DCP's (private ones too), never a function
                return obj
        if module == "torch":
            obj = getattr(torch, name, None)
            if obj is torch.Size or isinstance(obj, _TORCH_VALUES):
                return obj
        if (module, name) in _SAFE_CALLABLES:
            return super().find_class(module, name)
        raise UnsafeCheckpoint(f"{self.source}: DCP metadata refers to {module}.{name}, refusing to load it")


_SAFE_CALLABLES = {
    ("collections", "OrderedDict"),
    ("torch.serialization", "_get_layout"),  # a layout by its name (torch.strided): a lookup
    ("pathlib", "PosixPath"),  # the checkpoint id DCP records (a path value, nothing opened)
}
"""Callables a .metadata pickle calls that only build plain values."""


def check_dcp_metadata(dcp_dir: Path) -> None:
    """Refuse a DCP checkpoint whose .metadata would build anything but DCP metadata."""
    path = Path(dcp_dir) / DCP_METADATA
    with open(path, "rb") as f:
        reader = _MetadataOnly(f)
        reader.source = path
        try:
            reader.load()
        except UnsafeCheckpoint:
            raise
        except Exception as err:  # truncated or not a pickle at all
            raise UnsafeCheckpoint(f"{path}: unreadable DCP metadata ({type(err).__name__}: {err})") from None
