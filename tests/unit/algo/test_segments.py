"""segment_attention against plain per-sample causal attention, grouped-query heads included."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rl_service.algo.segments import PromptGroups, row_layout, segment_attention


def _per_segment(q, k, v, spans):
    """Loop reference: causal sdpa on each [start, start + n) of the row, kv heads repeated."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.zeros_like(q)
    for start, n in spans:
        sl = slice(start, start + n)
        out[:, :, sl] = F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True)
    return out


def test_plain_segments_with_grouped_query_heads_match_a_loop():
    lengths = [5, 1, 12, 7, 3, 9]
    lay = row_layout(lengths, 13)
    L = sum(lengths)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, L, 8, generator=gen)
    k, v = torch.randn(1, 2, L, 8, generator=gen), torch.randn(1, 2, L, 8, generator=gen)
    starts = torch.cumsum(torch.tensor([0, *lengths[:-1]]), 0).tolist()
    want = _per_segment(q, k, v, list(zip(starts, lengths)))
    assert float((segment_attention(q, k, v, lay) - want).abs().max()) < 1e-6


def test_a_completion_attends_to_its_prompt_as_if_it_followed_it():
    """Rows 0 and 1 share a 4-token prompt: completion 1's outputs equal causal attention over
    [prompt, completion 1] alone."""
    lay = row_layout([7, 6], 8, PromptGroups(torch.tensor([4, 4]), torch.tensor([0, 0])))
    L = lay.token_index.numel()  # 4 + 3 + 2
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, L, 4, generator=gen) for _ in range(3))
    got = segment_attention(q, k, v, lay)
    seq = torch.tensor([0, 1, 2, 3, 7, 8])  # the prompt, then completion 1's tokens in the row
    want = F.scaled_dot_product_attention(q[:, :, seq], k[:, :, seq], v[:, :, seq], is_causal=True)
    assert float((got[:, :, seq] - want).abs().max()) < 1e-6
