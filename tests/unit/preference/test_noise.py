"""preference.noise: feedback rows become votes per item, EM's posteriors become one oriented pair
per item with its own label smoothing, and the Bradley–Terry loss takes that smoothing per pair."""

import random

import pytest
import torch

from rl_service.algo.preference import bradley_terry_loss, smoothed_pair_nll
from rl_service.preference.noise import MAX_EPS, apply_noise_handling, denoise, votes_of


def rows_from(annotators: dict[str, float], items: int, per_item: int, seed: int) -> list[dict]:
    """Each item: prompt `q<i>`, the better completion `good<i>`; each of `per_item` annotators
    labels it right with their accuracy."""
    rng = random.Random(seed)
    rows = []
    for i in range(items):
        for name in rng.sample(sorted(annotators), per_item):
            right = rng.random() < annotators[name]
            good, bad = f"good{i}", f"bad{i}"
            rows.append(
                {
                    "prompt": f"q{i}",
                    "chosen": good if right else bad,
                    "rejected": bad if right else good,
                    "annotator": name,
                }
            )
    return rows


def test_rows_about_one_item_in_either_order_are_votes_on_it():
    rows = [
        {"prompt": "p", "chosen": "b", "rejected": "a", "annotator": "x"},
        {"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "y"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    items, annotators, votes = votes_of(rows)
    assert items == [("p", "a", "b"), ("q", "a", "b")] and annotators == ["x", "y", ""]
    assert votes[0, 0] == 0.0 and votes[0, 1] == 1.0 and torch.isnan(votes[0, 2]) and votes[1, 2] == 1.0


def test_denoise_orients_items_by_reliability_not_by_the_majority():
    acc = {"a": 0.95, "b": 0.9, "c": 0.85, "bad1": 0.35, "bad2": 0.3}
    rows = rows_from(acc, items=1500, per_item=3, seed=0)
    pairs, found = denoise(rows)
    assert found["items"] == 1500 and found["rows"] == 4500 and found["flipped"] > 0
    assert all(abs(found["annotators"][k] - v) < 0.05 for k, v in acc.items()), found["annotators"]
    right = sum(p["chosen"].startswith("good") for p in pairs) / len(pairs)
    majority = {}
    for r in rows:
        majority.setdefault(r["prompt"], []).append(r["chosen"].startswith("good"))
    by_majority = sum(sum(v) * 2 > len(v) for v in majority.values()) / len(majority)
    assert right > by_majority + 0.02, (right, by_majority)
    assert all(0 <= p["label_eps"] <= MAX_EPS for p in pairs)
    unanimous = {q for q, v in majority.items() if len(set(v)) == 1}
    calm = [p["label_eps"] for p in pairs if p["prompt"] in unanimous]
    split = [p["label_eps"] for p in pairs if p["prompt"] not in unanimous]
    assert sum(calm) / len(calm) < sum(split) / len(split)  # a contested item trains less surely


def test_smoothing_mode_leaves_the_rows_alone_and_a_floor_applies_to_annotators():
    rows = rows_from({"a": 0.99, "b": 0.99}, items=50, per_item=2, seed=1)
    same, found = apply_noise_handling(rows, "smoothing", 0.1)
    assert same is rows and found is None
    pairs, _ = apply_noise_handling(rows, "annotators", 0.05)
    assert min(p["label_eps"] for p in pairs) >= 0.05


def test_per_pair_smoothing_is_each_pairs_own_loss():
    z = torch.tensor([2.0, -1.0, 0.5])
    eps = torch.tensor([0.0, 0.2, 0.4])
    per_pair = smoothed_pair_nll(z, eps)
    for zi, ei, got in zip(z.tolist(), eps.tolist(), per_pair.tolist()):
        expected = -(1 - ei) * torch.nn.functional.logsigmoid(torch.tensor(zi)) - ei * torch.nn.functional.logsigmoid(
            torch.tensor(-zi)
        )
        assert got == pytest.approx(float(expected), abs=1e-6)
    loss, _ = bradley_terry_loss(z, torch.zeros(3), label_smoothing=eps)
    assert float(loss) == pytest.approx(float(per_pair.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_pair_nll(z, torch.tensor([0.0, 0.5, 0.1]))
