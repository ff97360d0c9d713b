"""algo/annotators.py: one EM iteration against a plain-python loop, and on simulated annotators
with known accuracies (one of them reversed) the estimates come back and the posteriors beat a
majority vote."""

import math
import random

import pytest
import torch

from rl_service.algo.annotators import majority_posterior, one_coin_em

NAN = float("nan")


def simulate(accuracies: list[float], items: int, per_item: int, seed: int):
    """votes [items, annotators] of `per_item` distinct annotators per item, and the truth."""
    rng = random.Random(seed)
    truth = [rng.random() < 0.5 for _ in range(items)]
    votes = torch.full((items, len(accuracies)), NAN)
    for i, y in enumerate(truth):
        for j in rng.sample(range(len(accuracies)), per_item):
            right = rng.random() < accuracies[j]
            votes[i, j] = float(y if right else not y)
    return votes, torch.tensor(truth, dtype=torch.float32)


def em_step_by_loops(votes: list[list[float]], post: list[float], smoothing: float) -> tuple[list[float], list[float]]:
    """One M-step then one E-step, written out with loops."""
    n_ann = len(votes[0])
    acc = []
    for j in range(n_ann):
        right = total = 0.0
        for i, row in enumerate(votes):
            if not math.isnan(row[j]):
                total += 1
                right += post[i] if row[j] == 1.0 else 1 - post[i]
        acc.append((right + smoothing) / (total + 2 * smoothing))
    prior = sum(post) / len(post)
    new = []
    for row in votes:
        p1, p0 = prior, 1 - prior
        for j, vote in enumerate(row):
            if math.isnan(vote):
                continue
            p1 *= acc[j] if vote == 1.0 else 1 - acc[j]
            p0 *= 1 - acc[j] if vote == 1.0 else acc[j]
        new.append(p1 / (p1 + p0))
    return acc, new


def test_one_iteration_equals_the_loop_written_update():
    votes, _ = simulate([0.9, 0.7, 0.6, 0.4], items=40, per_item=2, seed=1)
    out = one_coin_em(votes, iters=1, smoothing=1.0)
    acc, post = em_step_by_loops(votes.tolist(), majority_posterior(votes).tolist(), smoothing=1.0)
    assert torch.allclose(out.accuracy, torch.tensor(acc), atol=1e-6)
    assert torch.allclose(out.posterior, torch.tensor(post), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_known_accuracies_and_beats_the_majority_vote(seed):
    truth_acc = [0.95, 0.85, 0.75, 0.6, 0.3]  # the last one mostly reverses the labels
    votes, truth = simulate(truth_acc, items=3000, per_item=3, seed=seed)
    out = one_coin_em(votes)
    assert torch.allclose(out.accuracy, torch.tensor(truth_acc), atol=0.04), out.accuracy
    em_right = float(((out.posterior > 0.5).float() == truth).float().mean())
    majority = majority_posterior(votes)
    maj_right = float(((majority > 0.5).float() == truth).float().mean())
    assert em_right > maj_right + 0.02, (em_right, maj_right)
    assert out.iterations > 1 and abs(out.prior - float(truth.mean())) < 0.03


def test_items_nobody_voted_on_stay_at_the_prior_and_one_voter_alone_learns_nothing():
    votes = torch.tensor([[1.0, NAN], [NAN, NAN]])
    out = one_coin_em(votes, iters=20)
    assert out.posterior[1] == pytest.approx(out.prior, abs=1e-6)
    assert torch.isfinite(out.accuracy).all() and torch.isfinite(out.posterior).all()
