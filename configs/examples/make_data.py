"""Write the example datasets of configs/examples/ as JSONL (the format a user brings).

    python configs/examples/make_data.py            # -> data/examples/{addition,subtraction}/

addition/     the quickstart's own problems, through the generic path: the same held-out 200
              and the same training pairs as the built-in `addition` task, one row each:
              {"prompt": "37+48=", "answer": "85"}
subtraction/  a task the project does not build in, as chat messages ending in the assistant's
              answer (the SFT target; RL keeps the user turn as the prompt):
              {"messages": [{"role": "user", "content": "57-23="},
                            {"role": "assistant", "content": "34"}], "answer": "34", "id": 12}
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows):>5} rows to {path}")


def addition(out: Path) -> None:
    from rl_service.config import AdditionConfig
    from rl_service.tasks.addition import AdditionTask

    task = AdditionTask(AdditionConfig())  # digits 2, num_eval 200, seed 1234: the quickstart's split
    write_jsonl(out / "train.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in task.train_pairs])
    write_jsonl(out / "eval.jsonl", [{"prompt": p.prompt, "answer": p.answer} for p in task.eval_problems])


def subtraction(out: Path, num_eval: int = 200, seed: int = 7) -> None:
    pairs = [(a, b) for a in range(100) for b in range(a + 1)]  # a - b >= 0, two digits at most
    random.Random(seed).shuffle(pairs)
    rows = [
        {
            "messages": [{"role": "user", "content": f"{a}-{b}="}, {"role": "assistant", "content": str(a - b)}],
            "answer": str(a - b),
            "id": i,
        }
        for i, (a, b) in enumerate(pairs)
    ]
    write_jsonl(out / "eval.jsonl", rows[:num_eval])
    write_jsonl(out / "train.jsonl", rows[num_eval:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/examples", help="output directory (default data/examples)")
    out = Path(ap.parse_args().out)
    addition(out / "addition")
    subtraction(out / "subtraction")


if __name__ == "__main__":
    main()
