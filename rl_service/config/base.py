"""What every config section shares: strictness, field docstrings, resources.

`Section` forbids unknown keys (a typo is an error, not a silent default) and reads the
docstring under each field as its description. `fold_legacy` lets a section accept the flat
layout configs were written in before a group of fields became a nested variant.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class Resources(Section):
    """What one replica of a component asks Ray for."""

    num_cpus: float = Field(1.0, ge=0)
    """Logical CPUs per replica (fractions allowed; Ray sets OMP threads from this)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    custom: dict[str, float] = {}
    """Custom resource labels, e.g. {"rollout": 1} to land on nodes labelled for rollout."""


def fold_legacy(data: Any, key: str, tag: str, flat: dict[str, str], keep: bool = True) -> Any:
    """Old flat layout -> nested variant, for `mode="before"` validators.

    `data[key]` given as a bare string becomes `{tag: that string}`; each flat field of `data`
    named in `flat` (old name -> name inside the variant) moves into it. With keep=False the
    flat fields are dropped instead (the variant chosen does not have them: the old schema
    ignored them there). A nested `data[key]` mapping is left as it is (the new layout)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if key in data and not isinstance(data[key], str):
        return data
    moved = {new: data.pop(old) for old, new in flat.items() if old in data}
    if key in data:
        data[key] = {tag: data[key], **(moved if keep else {})}
    elif moved and keep:
        data[key] = moved
    return data
