"""How reliable each annotator is, from how they agree: the one-coin Dawid–Skene model, by EM.

Each item i (one pair of completions of one prompt) has a hidden true orientation y_i in {0, 1}
(1: its first completion is the better one). Annotator j reports the true orientation with
probability a_j (their accuracy) and the other one otherwise, independently across items. From
the votes alone, EM (Dawid & Skene 1979) estimates every a_j and each item's posterior
P(y_i = 1 | votes). An annotator below 0.5 is systematically reversed, and the model uses that
too. Nothing is known about the truth: agreement is the only evidence, so at least two
annotators must share items.

    votes: [items, annotators] float, 1.0 / 0.0 = voted orientation 1 / 0, nan = did not vote

Plain torch, no model: rl_service/preference/noise.py turns feedback rows into these votes and
the posteriors into per-pair soft labels for the reward-model loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Reliability:
    accuracy: Tensor
    """[annotators] estimated P(an annotator's vote is the true orientation)."""
    posterior: Tensor
    """[items] P(true orientation = 1 | every vote)."""
    prior: float
    """Estimated share of items whose true orientation is 1."""
    iterations: int


def majority_posterior(votes: Tensor) -> Tensor:
    """[items] share of each item's votes for orientation 1 (0.5 with no votes): EM's start."""
    seen = ~torch.isnan(votes)
    ones = torch.where(seen, votes, 0.0).sum(-1)
    count = seen.sum(-1)
    return torch.where(count > 0, ones / count.clamp(min=1), torch.full_like(ones, 0.5))


def one_coin_em(votes: Tensor, iters: int = 100, tol: float = 1e-6, smoothing: float = 1.0) -> Reliability:
    """EM for the one-coin model from the majority vote. M-step: a_j = (expected correct votes
    + smoothing) / (votes + 2 * smoothing) (a Beta(1 + s, 1 + s) prior keeps an annotator with
    few votes near 0.5), prior = mean posterior; E-step: posterior_i from the a_j of the voters.
    Stops when no posterior moves by more than `tol`."""
    votes = votes.double()
    seen = ~torch.isnan(votes)  # [I, J]
    v = torch.where(seen, votes, 0.0)
    post = majority_posterior(votes)
    acc = torch.full((votes.shape[1],), 0.5, dtype=torch.float64)
    prior, done = 0.5, 0
    for step in range(1, iters + 1):
        done = step
        # M-step: P(vote j on item i is right) = post_i if it voted 1, else 1 - post_i
        right = torch.where(seen, v * post[:, None] + (1 - v) * (1 - post[:, None]), 0.0)
        acc = (right.sum(0) + smoothing) / (seen.sum(0) + 2 * smoothing)
        prior = float(post.mean().clamp(1e-6, 1 - 1e-6))
        # E-step, in logs: log P(votes, y=1) - log P(votes, y=0)
        log_a, log_na = torch.log(acc.clamp(1e-9)), torch.log((1 - acc).clamp(1e-9))
        ll1 = torch.where(seen, v * log_a + (1 - v) * log_na, 0.0).sum(-1)
        ll0 = torch.where(seen, v * log_na + (1 - v) * log_a, 0.0).sum(-1)
        new = torch.sigmoid(ll1 - ll0 + torch.log(torch.tensor(prior / (1 - prior), dtype=torch.float64)))
        moved = float((new - post).abs().max()) if new.numel() else 0.0
        post = new
        if moved < tol:
            break
    return Reliability(accuracy=acc.float(), posterior=post.float(), prior=prior, iterations=done)
