"""Segment attention for packed rows: attention computed per sample (or per shared prompt and per
completion), never as one L x L masked attention over the whole row.

Pure torch. A packed row holds the micro-batch's tokens back to back (algo/packing.py). Its
linear layers run once over the row's L tokens; attention is the only cross-token operation, and
it runs here on the row regrouped into SEGMENTS. A segment is a run of row positions `own`
(queries) that sees an optional context run `ctx` (all of it) plus its own earlier tokens:

    plain sample i:            ctx = none,                 own = sample i's l_i tokens
    shared prompt of a group:  ctx = none,                 own = the prompt's P tokens
    completion k of the group: ctx = the group's prompt,   own = c_k's tokens (positions P..)

Segments of similar length are batched into blocks [S, heads, len, dim] (right padded): a plain
block is causal sdpa (right padding is never seen by a real query under causality), a
completion block gets a small explicit mask (context visible, causal inside c_k). So attention
costs about sum(l_i^2), as in the padded path, instead of L^2.

Shared prompts: one packed segment per group = [prompt, c_1, ..., c_n], position ids 0..P-1
for the prompt and P..P+len_k-1 for each c_k: each completion computes exactly what it would
after the prompt alone, and the prompt is computed once. The output for grid entry (i, t) (the
prediction of token t+1 of sample i) is read at row position src[i, t]; the prompt's positions,
including its last one (which predicts every c_k's first token), are read by every member, so
their gradients collect every member's terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BUCKET_RATIO = 0.7
"""A block holds segments whose span is >= BUCKET_RATIO x its longest: padding wastes at most
1 / 0.7^2 ~ 2x of a segment's attention, with a handful of sdpa calls per layer."""


@dataclass(frozen=True)
class PromptGroups:
    """Which rows of a batch may share their prompt. prompt_len: [N] long, tokens of each row's
    prompt; group: [N] long, rows with the same id >= 0 have token-identical prompts (-1: the
    row shares nothing)."""

    prompt_len: Tensor
    group: Tensor

    def select(self, idx: Sequence[int]) -> PromptGroups:
        """The rows `idx` (a micro-batch), in that order."""
        return PromptGroups(self.prompt_len[list(idx)], self.group[list(idx)])


def prompt_groups(prompts: Sequence[Sequence[int]], runs: Sequence[Sequence[int]]) -> tuple[PromptGroups, int]:
    """Sharing ids of the rows of `runs` (each a group's row indices, e.g. batching.group_runs)
    from their prompt token ids: a group of >= 2 rows whose prompts are all equal shares one id;
    a group whose prompts differ (e.g. multi-turn episodes) shares nothing.
    prompts: [N] token id lists -> (PromptGroups, number of groups refused for differing prompts).

    prompt_groups([[1, 2], [1, 2], [3], [4]], [[0, 1], [2, 3]]) -> group [0, 0, -1, -1], 1 refused
    """
    group = [-1] * len(prompts)
    refused = 0
    for gid, rows in enumerate(runs):
        if len(rows) < 2:
            continue
        first = tuple(prompts[rows[0]])
        if all(tuple(prompts[r]) == first for r in rows[1:]):
            for r in rows:
                group[r] = gid
        else:
            refused += 1
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return PromptGroups(lens, torch.tensor(group, dtype=torch.long)), refused


@dataclass(frozen=True)
class AttentionBlock:
    """S segments batched: their queries at row positions q_index [S, Lq] (padding: 0), keys at
    k_index [S, Lk]; mask [S, 1, Lq, Lk] bool (True = visible) or None for plain causal segments
    (then k_index is q_index); q_kept [n] long: where the real queries sit in q_index.flatten()."""

    q_index: Tensor
    k_index: Tensor
    mask: Tensor | None
    q_kept: Tensor


@dataclass(frozen=True)
class RowLayout:
    """One packed row of a micro-batch of b samples (right-padded to T columns).

    token_index: [L] long, flat index into the micro-batch's [b, T] input of each row token;
    position_ids: [L] long; blocks: the attention blocks covering every row position once as a
    query; order: [L] long, row position p's attention output is cat(kept block outputs)[order[p]];
    src: [b, T-1] long, row position whose output is grid entry (i, t) (0 where not valid);
    valid: [b, T-1] bool, t < l_i - 1; shared_tokens: prompt tokens the row does not hold because
    a group shares them; max_span: the longest context any query sees (sliding-window check).
    """

    token_index: Tensor
    position_ids: Tensor
    blocks: tuple[AttentionBlock, ...]
    order: Tensor
    src: Tensor
    valid: Tensor
    shared_tokens: int
    max_span: int

    def gather(self, per_position: Tensor) -> Tensor:
        """Per-row-position outputs [L] -> the [b, T-1] grid (0 where not valid)."""
        out = per_position.index_select(0, self.src.flatten()).view(self.src.shape)
        return torch.where(self.valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


def row_layout(lengths: Sequence[int], T: int, groups: PromptGroups | None = None, device=None) -> RowLayout:
    """The packed row of samples of `lengths` (each >= 1, <= T): each sample a plain segment,
    except rows of one `groups` id (>= 2 of them in this micro-batch), whose prompt is held once,
    followed by each member's completion. The row follows the rows' order (a group at its first
    member's place)."""
    lengths = [int(n) for n in lengths]
    b = len(lengths)
    gid = groups.group.tolist() if groups is not None else [-1] * b
    plen = groups.prompt_len.tolist() if groups is not None else [0] * b
    members: dict[int, list[int]] = {}
    for i, g in enumerate(gid):
        if g >= 0:
            members.setdefault(g, []).append(i)
    token_index: list[Tensor] = []
    position_ids: list[Tensor] = []
    segments: list[tuple[int, int, int, int]] = []  # (ctx_start, ctx_len, own_start, own_len)
    src = torch.zeros(b, max(T - 1, 0), dtype=torch.long)
    cur = shared = 0

    def put(row: int, first_col: int, n: int, first_pos: int) -> int:
        nonlocal cur
        start = cur
        token_index.append(row * T + first_col + torch.arange(n))
        position_ids.append(first_pos + torch.arange(n))
        cur += n
        return start

    done: set[int] = set()
    for i in range(b):
        if i in done:
            continue
        rows = members.get(gid[i], [i]) if gid[i] >= 0 else [i]
        if len(rows) < 2:  # a plain sample
            start = put(i, 0, lengths[i], 0)
            segments.append((start, 0, start, lengths[i]))
            src[i, : lengths[i] - 1] = start + torch.arange(lengths[i] - 1)
            done.add(i)
            continue
        P = plen[i]
        p0 = put(i, 0, P, 0)
        segments.append((p0, 0, p0, P))
        for r in rows:
            own = lengths[r] - P
            if own < 0:
                raise ValueError(f"row {r}: prompt length {P} longer than the sample ({lengths[r]})")
            c0 = put(r, P, own, P)
            if own:
                segments.append((p0, P, c0, own))
            t = torch.arange(lengths[r] - 1)
            src[r, : lengths[r] - 1] = torch.where(t < P, p0 + t, c0 + t - P)
            done.add(r)
        shared += P * (len(rows) - 1)
    valid = torch.arange(max(T - 1, 0))[None] < torch.tensor(lengths)[:, None] - 1
    blocks, kept = _blocks(segments)
    order = torch.empty(cur, dtype=torch.long)
    order[kept] = torch.arange(cur)
    return RowLayout(
        token_index=torch.cat(token_index).to(device),
        position_ids=torch.cat(position_ids).to(device),
        blocks=tuple(_to(blk, device) for blk in blocks),
        order=order.to(device),
        src=src.to(device),
        valid=valid.to(device),
        shared_tokens=shared,
        max_span=max((c + o for _, c, _, o in segments), default=0),
    )


def _buckets(spans: Sequence[int]) -> list[list[int]]:
    """Indices into `spans` grouped longest first; a group ends below BUCKET_RATIO x its first."""
    out: list[list[int]] = []
    for k in sorted(range(len(spans)), key=lambda k: (-spans[k], k)):
        if out and spans[k] >= BUCKET_RATIO * spans[out[-1][0]]:
            out[-1].append(k)
        else:
            out.append([k])
    return out


def _blocks(segments: list[tuple[int, int, int, int]]) -> tuple[list[AttentionBlock], Tensor]:
    """Attention blocks of `segments` and the row positions of their kept queries, in block order."""
    blocks, kept = [], []
    plain = [s for s in segments if s[1] == 0]
    ctx = [s for s in segments if s[1] > 0]
    for bucket in _buckets([s[3] for s in plain]):
        segs = [plain[k] for k in bucket]
        q_index, q_keep = _runs([s[2] for s in segs], [s[3] for s in segs])
        blocks.append(AttentionBlock(q_index, q_index, None, q_keep.flatten().nonzero()[:, 0]))
        kept.append(q_index.flatten()[q_keep.flatten()])
    for bucket in _buckets([s[1] + s[3] for s in ctx]):
        segs = [ctx[k] for k in bucket]
        c_len = torch.tensor([s[1] for s in segs])
        q_index, q_keep = _runs([s[2] for s in segs], [s[3] for s in segs])  # [S, C]
        p_index, p_keep = _runs([s[0] for s in segs], [s[1] for s in segs])  # [S, Pm]
        k_index = torch.cat([p_index, q_index], 1)
        k_pos = torch.cat(
            [torch.arange(p_index.shape[1]).expand_as(p_index), c_len[:, None] + torch.arange(q_index.shape[1])], 1
        )
        k_keep = torch.cat([p_keep, q_keep], 1)
        # a padded query sees every real key: no all-masked row (sdpa would return NaN there)
        q_pos = torch.where(q_keep, c_len[:, None] + torch.arange(q_index.shape[1]), torch.iinfo(torch.long).max)
        mask = k_keep[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])  # [S, C, Pm + C]
        blocks.append(AttentionBlock(q_index, k_index, mask[:, None], q_keep.flatten().nonzero()[:, 0]))
        kept.append(q_index.flatten()[q_keep.flatten()])
    return blocks, torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)


def _runs(starts: Sequence[int], lens: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Runs start..start+len-1, right padded with 0: (index [S, max len] long, keep [S, max len] bool)."""
    n = torch.tensor(lens, dtype=torch.long)
    t = torch.arange(int(n.max()) if len(lens) else 0)
    keep = t[None] < n[:, None]
    return torch.where(keep, torch.tensor(starts, dtype=torch.long)[:, None] + t[None], 0), keep


def _to(blk: AttentionBlock, device) -> AttentionBlock:
    move = (lambda x: None if x is None else x.to(device)) if device is not None else (lambda x: x)
    return AttentionBlock(move(blk.q_index), move(blk.k_index), move(blk.mask), move(blk.q_kept))


def segment_attention(
    query: Tensor, key: Tensor, value: Tensor, layout: RowLayout, scale: float | None = None, dropout: float = 0.0
) -> Tensor:
    """Attention of a packed row, segment by segment.

    query: [1, H, L, D]; key, value: [1, Hk, L, D] (H a multiple of Hk: grouped-query heads,
    query head h reads key head h // (H / Hk)) -> [1, H, L, D].
    """
    H, Hk = query.shape[1], key.shape[1]
    if H != Hk:
        key, value = key.repeat_interleave(H // Hk, dim=1), value.repeat_interleave(H // Hk, dim=1)
    q0, k0, v0 = query[0], key[0], value[0]  # [H, L, D]
    D = q0.shape[-1]

    def pick(x: Tensor, index: Tensor) -> Tensor:  # [H, L, D] -> [S, H, len, D]
        # index_select: its backward is an index_add, much cheaper on CPU than advanced
        # indexing's accumulate (measured: a sort per call)
        return x.index_select(1, index.flatten()).view(H, *index.shape, D).transpose(0, 1)

    outs = []
    for blk in layout.blocks:
        o = F.scaled_dot_product_attention(
            pick(q0, blk.q_index),
            pick(k0, blk.k_index),
            pick(v0, blk.k_index),
            attn_mask=blk.mask,
            dropout_p=dropout,
            is_causal=blk.mask is None,
            scale=scale,
        )  # [S, H, Lq, D]
        outs.append(o.transpose(0, 1).reshape(H, -1, D).index_select(1, blk.q_kept))
    return torch.cat(outs, 1).index_select(1, layout.order)[None]
