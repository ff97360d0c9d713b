"""Noisy preference labels (preference.noise): from rows as people gave them to pairs to train on.

smoothing    every row is a pair as given; the loss takes each label as wrong with probability
             preference.label_smoothing (the conservative Bradley–Terry / cDPO loss)
annotators   rows carry an `annotator` id; the rows about one item (the same prompt and the
             same two completions, in either order) are votes; the one-coin Dawid–Skene EM
             (algo/annotators.py) estimates each annotator's accuracy from their agreement,
             and each item becomes ONE pair, oriented by its posterior, with a per-pair label
             smoothing of 1 - posterior confidence (at least preference.label_smoothing):
             an item its reliable annotators agree on trains as a sure label, a contested
             one barely, and a reversing annotator's votes count for the other side.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from rl_service.algo.annotators import Reliability, one_coin_em

MAX_EPS = 0.4999
"""Per-pair label smoothing stays below 1/2 (at 1/2 a pair teaches nothing; above, the reverse)."""


def item_key(row: dict) -> tuple[str, str, str]:
    """(prompt, first, second) with the two completions in a fixed order: one key per item."""
    a, b = sorted((row["chosen"], row["rejected"]))
    return row["prompt"], a, b


def votes_of(rows: list[dict]) -> tuple[list[tuple[str, str, str]], list[str], torch.Tensor]:
    """(items, annotators, votes [items, annotators]): 1.0 where the annotator chose the item's
    first completion, 0.0 the second, nan where they gave no label. A row without an `annotator`
    counts as one annotator of its own ("" ). An annotator who labels one item twice: the last
    label counts."""
    items: OrderedDict[tuple, int] = OrderedDict()
    annotators: OrderedDict[str, int] = OrderedDict()
    cells = []
    for row in rows:
        key = item_key(row)
        i = items.setdefault(key, len(items))
        j = annotators.setdefault(str(row.get("annotator", "")), len(annotators))
        cells.append((i, j, 1.0 if row["chosen"] == key[1] else 0.0))
    votes = torch.full((len(items), len(annotators)), float("nan"))
    for i, j, v in cells:
        votes[i, j] = v
    return list(items), list(annotators), votes


def denoise(rows: list[dict], label_smoothing: float = 0.0, em_iters: int = 100) -> tuple[list[dict], dict]:
    """One pair per item with its `label_eps` (see the module doc), and what EM found:
    {"annotators": {id: accuracy}, "items", "rows", "contested" (items whose posterior is
    within 0.1 of 1/2), "flipped" (items oriented against their majority vote)}."""
    items, annotators, votes = votes_of(rows)
    rel: Reliability = one_coin_em(votes, iters=em_iters)
    seen = ~torch.isnan(votes)
    majority = torch.where(seen, votes, 0.0).sum(-1) / seen.sum(-1).clamp(min=1)
    pairs = []
    for (prompt, first, second), p in zip(items, rel.posterior.tolist()):
        chosen, rejected = (first, second) if p >= 0.5 else (second, first)
        eps = min(MAX_EPS, max(label_smoothing, 1.0 - max(p, 1.0 - p)))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "label_eps": eps})
    post = rel.posterior
    stats = {
        "annotators": dict(zip(annotators, [round(a, 4) for a in rel.accuracy.tolist()])),
        "items": len(items),
        "rows": len(rows),
        "contested": int(((post - 0.5).abs() < 0.1).sum()),
        "flipped": int(((post >= 0.5) != (majority >= 0.5)).sum()),
    }
    return pairs, stats


def apply_noise_handling(pairs: list[dict], noise: str, label_smoothing: float) -> tuple[list[dict], dict | None]:
    """preference.noise on the training pairs: `smoothing` leaves them as they are (the loss
    smooths every label), `annotators` -> `denoise`."""
    if noise == "annotators":
        return denoise(pairs, label_smoothing)
    return pairs, None
