"""The learner's packed-row attention, registered with transformers' AttentionInterface.

transformers turns a packed row's position-id resets into one [L, L] block-diagonal mask, and sdpa
then pays L^2 for the row: packing a 4k-token micro-batch of ~200-token samples made the update
~5x SLOWER than padding (measured: attention 35 s of a 59 s forward+backward, vs 2 s padded).
`SEGMENTS` runs attention per segment instead (algo/segments.py); the layout travels to every
attention layer as the `segment_layout` keyword, which the model forwards pass through untouched
(as they do flash-attention's cu_seq_lens) in Llama, Qwen2, Mistral and GPT-2 (tests check each;
the learner's setup check refuses a model where it does not arrive).

Without a layout (padded forwards, the probes) it is transformers' sdpa attention, with the
same padding mask: the model behaves exactly as with `sdpa`. Its mask function builds no mask
for a row without a padding mask, so a packed row never materialises the [L, L] mask.
"""

from __future__ import annotations

from torch import Tensor, nn

from rl_service.algo.segments import RowLayout, segment_attention

SEGMENTS = "rl_segments"
"""The attention implementation name (config._attn_implementation) of a model using it."""


def _attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segment_layout: RowLayout | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """AttentionInterface signature: query [1, H, L, D], key / value [1, Hk, L, D] -> ([1, L, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segment_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    window = kwargs.get("sliding_window")
    if window is not None and segment_layout.max_span > window:
        raise ValueError(
            f"a packed segment spans {segment_layout.max_span} tokens, more than the model's sliding window "
            f"({window}); set learner.max_tokens_per_microbatch: null"
        )
    out = segment_attention(query, key, value, segment_layout, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def _mask(*args, attention_mask: Tensor | None = None, **kwargs) -> Tensor | None:
    """No mask for a row without a padding mask (a packed row, or one unpadded sequence: causal);
    otherwise sdpa's."""
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def use_segment_attention(model: nn.Module) -> None:
    """Switch an HF model (a PreTrainedModel, before sharding) to the segment attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SEGMENTS, _attention)
    AttentionMaskInterface.register(SEGMENTS, _mask)
    model.set_attn_implementation(SEGMENTS)
