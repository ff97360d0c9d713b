"""Stage profiles with py-spy: which stage holds a run back.

`BENCH_PROFILE=1` (or `bench.run NAME --profile`) wraps each training subprocess in
`py-spy record --subprocesses --format raw` (Ray actors are descendants of the driver, so
they are sampled too; only threads that are running count, idle waits do not). The
collapsed stacks are then bucketed by stage from the frames they contain:

    generate | reward | train | weight_sync | eval | startup | other

and the shares (of all non-idle samples, every process together) go into the result JSON
next to the timing figures; the 10 hottest leaf frames say what "other" is.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

# First match wins; substrings of py-spy frames "function (path:line)".
STAGES = [
    ("weight_sync", ("publish (rl_service", "load_weights (rl_service", "sync_weights (", "trl_vllm_shim.py")),
    ("eval", ("evaluate (rl_service", "greedy_accuracy_hf (")),
    ("train", ("train_step (rl_service", "training_step (", "backward (torch")),
    (
        "generate",
        ("generate (rl_service/rollout", "_generate_single_turn (", "generate (vllm", "generate (transformers"),
    ),
    ("reward", ("rl_service/reward/", "_calculate_rewards (")),
    (
        "startup",
        ("setup (rl_service", "__init__ (rl_service/rollout", "from_pretrained (", "_init_vllm (", "_find_and_load ("),
    ),  # not "<module> (": every -m script's stack starts there
]


def enabled() -> bool:
    return os.environ.get("BENCH_PROFILE") == "1"


def wrap(cmd: list[str], out: Path, rate: int = 25) -> list[str]:
    """`cmd` under py-spy when profiling is on (and py-spy is installed), else unchanged."""
    spy = shutil.which("py-spy") or str(Path(cmd[0]).with_name("py-spy"))
    if not enabled() or not Path(spy).exists():
        return cmd
    return [
        spy,
        "record",
        "--subprocesses",
        "--nonblocking",
        "--format",
        "raw",
        "--rate",
        str(rate),
        "-o",
        str(out),
        "--",
        *cmd,
    ]


def stage_of(stack: str) -> str:
    for stage, needles in STAGES:
        if any(n in stack for n in needles):
            return stage
    return "other"


def stage_shares(collapsed: Path) -> dict | None:
    """{"samples", "shares": {stage: fraction}, "hot_other": [(leaf frame, fraction)]} or None."""
    if not collapsed.is_file():
        return None
    stages: Counter = Counter()
    leaves: Counter = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        m = re.match(r"(.*) (\d+)$", line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        stage = stage_of(stack)
        stages[stage] += n
        if stage == "other":
            leaves[stack.rsplit(";", 1)[-1]] += n
    total = sum(stages.values())
    if not total:
        return None
    return {
        "samples": total,
        "file": str(collapsed),
        "shares": {k: round(v / total, 4) for k, v in stages.most_common()},
        "hot_other": [(leaf, round(n / total, 4)) for leaf, n in leaves.most_common(10)],
    }
