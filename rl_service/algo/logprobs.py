"""Per-token log-probabilities and entropies from logits, in float32.

Shapes: B = batch, T = time, V = vocab. `logits[:, t]` must already be the prediction
for `targets[:, t]` (the caller shifts: logits of positions 0..T-2 predict tokens 1..T-1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position.

    logits: [B, T, V] (any float dtype; upcast to fp32), targets: [B, T] int -> [B, T] fp32.
    Computed as logit[target] - logsumexp(logits): same value as gathering from
    log_softmax, without materialising a second [B, T, V] tensor.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution per position: -sum_v p log p.

    logits: [B, T, V] -> [B, T] fp32. Uses H = logsumexp(z) - sum_v p_v z_v, which is
    finite even where some p_v underflow to 0.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
