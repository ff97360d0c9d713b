"""Masked reductions over right-padded token tensors.

Shapes: B = batch, T = time. `mask` is 0/1 float or bool, `[B, T]` (or any shape that
matches `x`). Everything is computed in float32. Masked-out entries are selected away
with `torch.where`, not multiplied by 0, so NaN/inf garbage in padding cannot leak in.
Empty masks give 0, never NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossAgg = Literal["token_mean", "seq_mean"]


def right_pad(rows, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id rows of different lengths -> input_ids [B, T] long (pad_id after each row) and
    attention_mask [B, T] long (1 on real tokens); T = the longest row."""
    T = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids, mask


def left_pad(rows, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id rows of different lengths -> input_ids [B, T] long (pad_id before each row) and
    attention_mask [B, T] long (1 on real tokens); T = the longest row. Generation pads on the
    left so every row's next token is at position T."""
    T = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r):
            ids[b, T - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[b, T - len(r) :] = 1
    return ids, mask


def _select(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask else 0, as float32."""
    return torch.where(mask.bool(), x.float(), torch.zeros((), dtype=torch.float32, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over masked entries. x, mask: [B, T] -> scalar (dim=None) or reduced over `dim`."""
    sel = _select(x, mask)
    return sel.sum() if dim is None else sel.sum(dim)


def masked_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of masked entries (float32). mask: [B, T] -> scalar or reduced over `dim`."""
    m = mask.bool().float()
    return m.sum() if dim is None else m.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over masked entries; 0 where the mask is empty (never NaN).

    x, mask: [B, T] -> scalar (dim=None) or e.g. [B] for dim=-1.
    """
    # clamp(min=1): an empty mask has sum 0, so 0 / 1 = 0 instead of 0 / 0 = NaN.
    return masked_sum(x, mask, dim) / masked_count(mask, dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all masked entries -> scalar.

    unbiased=True uses Bessel's correction n/(n-1); with fewer than 2 entries
    (where that is undefined) the result is 0 rather than NaN/inf.
    """
    mean = masked_mean(x, mask)
    n = masked_count(mask)
    var = masked_sum((x.float() - mean) ** 2, mask) / n.clamp(min=1.0)
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1.0), torch.zeros_like(var))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over masked entries (unbiased var); masked-out entries 0.

    shift_mean=False adds the mean back (rescale only, keeps the sign of the mean).
    x, mask: [B, T] -> [B, T]
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _select(out, mask)


def zero_signal_rows(advantages: Tensor, mask: Tensor) -> Tensor:
    """Rows whose advantage is exactly 0 on every masked token (an empty row included).

    advantages, mask: [B, T] -> [B] bool. Without a critic, a KL term in the loss or an entropy
    bonus, such a row's PPO loss and gradient are exactly 0 (-0 * ratio on every token), so
    its forward and backward can be skipped. A NaN advantage is not 0: that row still runs
    (and trips the non-finite guard).
    """
    return ~(_select(advantages, mask) != 0).any(dim=-1)


def loss_denom(mask: Tensor, mode: LossAgg) -> float:
    """The count `aggregate_loss` divides by when `denom` is None, as a python float.

    A distributed learner all-reduces (sums) this over processes and passes the result
    as `denom`: token_mean -> masked tokens, seq_mean -> sequences with >= 1 token.
    mask: [B, T]
    """
    if mode == "token_mean":
        return float(masked_count(mask))
    if mode == "seq_mean":
        return float((masked_count(mask, dim=-1) > 0).sum())
    raise ValueError(f"unknown loss aggregation {mode!r} (expected 'token_mean' or 'seq_mean')")


def aggregate_loss(
    loss_tok: Tensor, mask: Tensor, mode: LossAgg = "token_mean", denom: float | Tensor | None = None
) -> Tensor:
    """Reduce per-token losses to a scalar.

    loss_tok, mask: [B, T] -> scalar.
    token_mean: sum(loss * mask) / (denom or number of masked tokens).
    seq_mean:   sum_b(masked mean of row b) / (denom or number of non-empty rows).

    `denom` lets a data-parallel learner divide its LOCAL sum by the GLOBAL count
    (`loss_denom` summed over processes): the per-process losses then add up to the
    single-process loss, so summed (or world-size-scaled averaged) gradients match it.
    A denominator <= 0 is treated as 1 (the numerator is 0 then anyway).
    """
    if mode == "token_mean":
        num = masked_sum(loss_tok, mask)
    elif mode == "seq_mean":
        num = masked_mean(loss_tok, mask, dim=-1).sum()  # empty rows contribute 0
    else:
        raise ValueError(f"unknown loss aggregation {mode!r} (expected 'token_mean' or 'seq_mean')")
    if denom is None:
        denom = loss_denom(mask, mode)
    d = torch.as_tensor(denom, dtype=torch.float32, device=num.device)
    return num / torch.where(d > 0, d, torch.ones_like(d))


def work_token_counts(mask: Tensor, advantages: Tensor, attention_mask: Tensor, every_token_has_grad: bool) -> dict:
    """The update's token counts, the same whatever work a learner option saves (so a saving
    can never pass as throughput by itself: the benchmark divides these by time).

    mask, advantages: [B, T-1] (loss tokens, their advantages); attention_mask: [B, T] (real
    tokens, prompt and completion). every_token_has_grad: a critic, a KL term in the loss or an
    entropy bonus gives every loss token a gradient; otherwise only tokens with advantage != 0
    have one.
    -> {"tokens/trained": loss tokens, "tokens/nonzero_grad": loss tokens with a non-zero
    gradient term, "tokens/processed": real tokens of every sample (prompt + completion)}."""
    m = mask.bool()
    carries = m if every_token_has_grad else m & (advantages != 0)
    return {
        "tokens/trained": float(m.sum()),
        "tokens/nonzero_grad": float(carries.sum()),
        "tokens/processed": float(attention_mask.bool().sum()),
    }
