"""Synthetic preference data with a checkable preferred answer, and preference JSONL I/O.

For an addition prompt `37+48=` the chosen completion is the correct sum (`85`) and the
rejected one a plausible wrong sum: off by one, off by ten, the carry forgotten, or the
digits swapped — the mistakes a half-trained policy makes. The split follows the
addition task: training pairs from its training operands, held-out pairs from its
held-out prompts, so a reward model is evaluated on prompts it never saw. Every wrong
answer is seeded by (seed, a, b): the data does not depend on generation order.

`load_pairs` picks the data of `rl-service train-rm|train-dpo`: a JSONL file, the serving
feedback database, or (neither) this synthetic task.

    python -m rl_service.preference.data --out data/prefs   # train.jsonl + eval.jsonl
    python -m rl_service.preference.data --out data/noisy --annotators a:0.9,b:0.8,c:0.5 --per-item 2
        # each training pair labelled by simulated annotators (rows with `annotator`), eval clean
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from rl_service.config import AdditionConfig, ConfigError, PreferenceRunConfig
from rl_service.infra.files import write_atomic
from rl_service.tasks.addition import AdditionTask, make_problem

PAIR_KEYS = ("prompt", "chosen", "rejected")


def _no_carry_sum(a: int, b: int) -> int:
    """Digit-wise sum with every carry dropped (37+48 -> 75)."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def wrong_answers(a: int, b: int) -> list[int]:
    """Every plausible wrong sum for a+b, sorted (never the right one, never negative)."""
    s = a + b
    candidates = {s + 1, s - 1, s + 10, s - 10, _no_carry_sum(a, b), int(str(s)[::-1])}
    return sorted(c for c in candidates if c >= 0 and c != s)


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
    """One plausible wrong sum for a+b, drawn with `rng`."""
    return str(rng.choice(wrong_answers(a, b)))


def make_pair(a: int, b: int, seed: int, k: int = 0) -> dict[str, str]:
    """The k-th pair of prompt a+b: its wrong answers in a seeded order, so k = 0, 1, ...
    give different rejected answers until they run out (then they repeat)."""
    problem = make_problem(a, b)
    order = wrong_answers(a, b)
    random.Random(f"preferences/{seed}/{a}/{b}").shuffle(order)
    return {"prompt": problem.prompt, "chosen": problem.answer, "rejected": str(order[k % len(order)])}


def synthetic_preferences(task_cfg: AdditionConfig, num_train: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs): num_train from training operands, one per held-out prompt.

    Above the number of training operands, each prompt comes back with another wrong answer.
    """
    task = AdditionTask(task_cfg)
    rng = random.Random(f"preferences/{seed}/order")
    if task.train_pairs is not None:
        operands = rng.sample(task.train_pairs, min(num_train, len(task.train_pairs)))
    else:
        operands = [task.sample_train(rng) for _ in range(num_train)]
    train = [make_pair(*operands[i % len(operands)], seed, i // len(operands)) for i in range(num_train)]
    held_out = []
    for p in task.eval_problems:
        a, b = (int(x) for x in p.prompt.rstrip("=").split("+"))
        held_out.append(make_pair(a, b, seed))
    return train, held_out


def annotated(pairs: list[dict], annotators: dict[str, float], per_item: int, seed: int) -> list[dict]:
    """Simulated annotators labelling clean pairs: each pair gets `per_item` distinct annotators
    (drawn per pair), each giving the right orientation with their accuracy, else the reverse;
    one row per label, with its `annotator`. Seeded by (seed, pair index)."""
    names = sorted(annotators)
    if not 1 <= per_item <= len(names):
        raise ConfigError(f"--per-item must be between 1 and the {len(names)} annotators, got {per_item}")
    rows = []
    for i, pair in enumerate(pairs):
        rng = random.Random(f"{seed}:{i}")
        for name in rng.sample(names, per_item):
            right = rng.random() < annotators[name]
            chosen, rejected = (pair["chosen"], pair["rejected"]) if right else (pair["rejected"], pair["chosen"])
            rows.append({"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, "annotator": name})
    return rows


def parse_annotators(spec: str) -> dict[str, float]:
    """`a:0.9,b:0.75` -> {"a": 0.9, "b": 0.75}; ConfigError naming a bad entry."""
    out = {}
    for part in filter(None, spec.split(",")):
        name, _, acc = part.partition(":")
        try:
            value = float(acc)
        except ValueError:
            value = -1.0
        if not name or not 0.0 <= value <= 1.0:
            raise ConfigError(f"--annotators: {part!r} is not NAME:ACCURACY with an accuracy in [0, 1]")
        out[name] = value
    return out


def split_by_prompt(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic split of arbitrary pairs (a file, the feedback database) by prompt hash."""
    train, held_out = [], []
    for pair in pairs:
        h = hashlib.sha256(f"{seed}/{pair['prompt']}".encode()).digest()
        (held_out if int.from_bytes(h[:8], "big") / 2**64 < eval_fraction else train).append(pair)
    return train, held_out


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Preference pairs from JSON lines; each must have string prompt/chosen/rejected (and may
    name its `annotator`)."""
    pairs = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not all(isinstance(row.get(k), str) for k in PAIR_KEYS):
            raise ValueError(f"{path}:{i}: expected string fields {PAIR_KEYS}, got {sorted(row)}")
        pair = {k: row[k] for k in PAIR_KEYS}
        if "annotator" in row:  # who gave the label (preference.noise=annotators)
            pair["annotator"] = str(row["annotator"])
        pairs.append(pair)
    return pairs


def write_jsonl(pairs: list[dict[str, str]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an `annotator` id (preference.noise=annotators) travels with its row
    keys = (*PAIR_KEYS, "annotator")
    write_atomic(path, "".join(json.dumps({k: p[k] for k in keys if k in p}) + "\n" for p in pairs))


def load_pairs(
    cfg: PreferenceRunConfig, data: str | None = None, eval_data: str | None = None, feedback_db: str | None = None
) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs) from `data` (JSONL) or `feedback_db` (SQLite of the serving
    endpoint), split by prompt hash unless `eval_data` gives the held-out pairs; with neither, the
    synthetic task. A problem with the flags (the CLI's --data, --eval-data, --feedback-db) or a split
    that leaves one side empty raises ConfigError."""
    pc = cfg.preference
    if data and feedback_db:
        raise ConfigError("give --data or --feedback-db, not both")
    if feedback_db:
        if not Path(feedback_db).is_file():
            raise ConfigError(f"--feedback-db: {feedback_db!r} not found")
        from rl_service.serving.feedback import FeedbackStore

        store = FeedbackStore(feedback_db)
        try:
            pairs = store.preference_pairs()
        finally:
            store.close()
    elif data:
        if not Path(data).is_file():
            raise ConfigError(f"--data: {data!r} not found")
        pairs = read_jsonl(data)
    else:
        if eval_data:
            raise ConfigError("--eval-data needs --data")
        return synthetic_preferences(cfg.task, pc.num_train_pairs, cfg.seed)
    if eval_data:
        return pairs, read_jsonl(eval_data)
    train, held_out = split_by_prompt(pairs, pc.eval_fraction, cfg.seed)
    if not train or not held_out:
        raise ConfigError(
            f"{len(pairs)} pairs split into {len(train)} train / {len(held_out)} held-out: "
            "need both (more data, another preference.eval_fraction, or --eval-data)"
        )
    return train, held_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the synthetic addition preference data as JSONL.")
    ap.add_argument("--out", required=True, help="directory for train.jsonl and eval.jsonl")
    ap.add_argument("--num-train", type=int, default=3000)
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--num-eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--annotators",
        default=None,
        metavar="NAME:ACC,...",
        help="simulated annotators label the training pairs (each right with its accuracy); eval stays clean",
    )
    ap.add_argument("--per-item", type=int, default=3, help="annotators per training pair (with --annotators)")
    args = ap.parse_args(argv)
    train, held_out = synthetic_preferences(
        AdditionConfig(digits=args.digits, num_eval=args.num_eval), args.num_train, args.seed
    )
    if args.annotators:
        try:
            train = annotated(train, parse_annotators(args.annotators), args.per_item, args.seed)
        except ConfigError as err:
            ap.error(str(err))
    write_jsonl(train, Path(args.out) / "train.jsonl")
    write_jsonl(held_out, Path(args.out) / "eval.jsonl")
    print(f"wrote {len(train)} train and {len(held_out)} held-out pairs to {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
