"""online_loop: does the served policy get better under its users' hidden preference, round after
round of `rl-service online`, with clean and with noisy labels, with and without noise handling?

Each side runs `rl-service online configs/online.yaml` (its own run dir, port and feedback
database) while simulated users (rl_service/testing/simulated_users.py, over HTTP with the
`openai` client) ask 2-digit additions and post which of two sampled answers they prefer under
the HIDDEN preference (`even` by default: an even answer beats anything else; ONLINE_HIDDEN=exact
for the arithmetic one); each comparison is labelled by `PER_ITEM` users.

    clean        every user right
    noisy        users wrong with probability 0.05, 0.10, 0.25, 0.40, 0.50 (mean 0.26): labels as given
    annotators   the same users, preference.noise=annotators (one-coin Dawid-Skene EM over the votes)
    smoothing    the same users, preference.label_smoothing=0.25 (conservative Bradley-Terry)

ONLINE_SIDES=clean,noisy,annotators runs some sides only.

Reported per side and version: the served policy's hidden score (the mean hidden score of its
greedy answers on 100 fixed held-out task prompts, through the endpoint), and per round the
adopted reward model's held-out pairwise accuracy as the service saw it (against the users'
noisy labels) and against the truth (the same held-out comparisons, oriented by the hidden
score). Quality, not speed: wall times are listed but not the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, log, table

BIAS = {"user-0": -0.20, "user-1": -0.15, "user-2": 0.0, "user-3": 0.15, "user-4": 0.25}
SIDES = {
    "clean": (0.0, {}, []),
    "noisy": (0.25, BIAS, []),
    "annotators": (0.25, BIAS, ["preference.noise=annotators"]),
    "smoothing": (0.25, BIAS, ["preference.label_smoothing=0.25"]),
}
PER_ITEM = 3
HIDDEN = os.environ.get("ONLINE_HIDDEN", "even")
"""The users' hidden preference (simulated_users.HIDDEN): `even` (an even answer beats anything
else) by default. The arithmetic ones (`exact`: a right sum beats a wrong one; `closeness`) gave
reward models of 0.54-0.60 held-out accuracy from the few thousand comparisons these users post
in a round, and the served policy got worse under them (docs/serving.md)."""
FULL = dict(rounds=3, overrides=["online.ppo_steps=15"])
QUICK = dict(rounds=1, overrides=["online.rm_every=16", "online.ppo_steps=2", "preference.steps=20"])


def _eval_prompts(n: int = 100) -> list[str]:
    from rl_service.config import AdditionConfig
    from rl_service.tasks import make_task

    return [p.prompt for p in make_task(AdditionConfig(digits=2, num_eval=200)).eval_problems[:n]]


class Users(threading.Thread):
    def __init__(self, url: str, noise: float, bias: dict, seed: int):
        from rl_service.testing.simulated_users import make_users

        super().__init__(daemon=True)
        self.url, self.halt = url, threading.Event()
        self.users = make_users(5, noise, bias, seed, HIDDEN)
        self.errors = 0

    def run(self) -> None:
        import httpx
        import openai

        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=2, timeout=120)
        with httpx.Client() as http:
            while not self.halt.is_set():
                for i, user in enumerate(self.users):
                    panel = tuple(self.users[(i + j) % 5] for j in range(1, PER_ITEM))
                    try:
                        user.round(client, http, self.url, {}, panel=panel)
                    except Exception:  # noqa: BLE001 - counted; the service may be between states
                        self.errors += 1
                time.sleep(0.05)
        self.errors += sum(len(u.stats.errors) for u in self.users)  # refused requests, non-200 feedback


def _truth_accuracy(rm_dir: str, held: Path) -> float:
    """Pairwise accuracy of a reward model on held-out comparisons oriented by the hidden score
    (one per distinct comparison; ties dropped)."""
    from rl_service.reward.learned import RewardModel
    from rl_service.testing.simulated_users import HIDDEN as PREFERENCES

    hidden_score = PREFERENCES[HIDDEN]
    items = {}
    for line in held.read_text().splitlines():
        r = json.loads(line)
        a, b = sorted((r["chosen"], r["rejected"]))
        items[(r["prompt"], a, b)] = None
    rows = []
    for p, a, b in items:
        sa, sb = hidden_score(p, a), hidden_score(p, b)
        if sa != sb:
            rows.append((p, a, b) if sa > sb else (p, b, a))
    if not rows:
        return float("nan")
    rm = RewardModel(rm_dir)
    good = rm.score([p for p, _, _ in rows], [c for _, c, _ in rows])
    bad = rm.score([p for p, _, _ in rows], [r for _, _, r in rows])
    return sum(g > b for g, b in zip(good, bad)) / len(rows)


def _side(name: str, root: Path, s: dict, prompts: list[str]) -> dict:
    from rl_service.infra.env import free_port
    from rl_service.testing.simulated_users import policy_score

    noise, bias, overrides = SIDES[name]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_dir = root / name
    cmd = [
        sys.executable, "-m", "rl_service.cli", "online", str(REPO / "configs" / "online.yaml"),
        f"name={name}", f"run_root={root}", f"serve.port={port}", f"serve.feedback_db={run_dir}/feedback.sqlite",
        *s["overrides"], *overrides,
    ]  # fmt: skip
    logf = open(root / f"{name}.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    state_path = run_dir / "online" / "state.json"
    scores, users = {}, None
    try:
        while "online: serving" not in (root / f"{name}.log").read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: the service exited {proc.returncode}; see {root / name}.log")
            time.sleep(1)
        scores[0] = policy_score(url, prompts, hidden=HIDDEN)
        log(f"online_loop {name}: v0 hidden score {scores[0]:.3f}")
        users = Users(url, noise, bias, seed=1)
        users.start()
        while True:
            st = json.loads(state_path.read_text())
            if st["serving"] not in scores:
                scores[st["serving"]] = policy_score(url, prompts, hidden=HIDDEN)
                log(f"online_loop {name}: v{st['serving']} hidden score {scores[st['serving']]:.3f}")
            if st["rounds"] >= s["rounds"]:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: the service exited {proc.returncode}")
            time.sleep(2)
    finally:
        if users is not None:
            users.halt.set()
        proc.terminate()
        proc.wait(120)
        logf.close()
    st = json.loads(state_path.read_text())
    rounds = []
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    adopted = None  # the reward model adopted at the end of round k (this round's refit or an earlier one)
    for r in rows:
        if "round" not in r:
            continue
        k = r["round"]
        if (run_dir / "online" / "rm" / f"rm-{k:04d}").is_dir():
            adopted = run_dir / "online" / "rm" / f"rm-{k:04d}"
        rm_dir = adopted
        held = run_dir / "online" / "rounds" / f"round-{k:04d}" / "pairs_held.jsonl"
        rounds.append(
            {
                "round": k,
                "pairs": r.get("online/feedback_pairs"),
                "rm_adopted": r.get("online/rm_adopted"),
                "rm_accuracy_labels": r.get("online/rm_refit_accuracy"),
                "rm_accuracy_truth": _truth_accuracy(str(rm_dir), held) if rm_dir is not None else None,
                "version_status": next(
                    (v["status"] for v in st["versions"].values() if v.get("round") == k), "no version"
                ),
            }
        )
    return {
        "noise": noise,
        "scores": {str(k): v for k, v in sorted(scores.items())},
        "served": st["serving"],
        "rounds": rounds,
        "user_errors": users.errors if users else None,
        "wall_s": time.perf_counter() - t0,
    }


def run(quick: bool) -> dict:
    s = QUICK if quick else FULL
    root = REPO / ".tmp" / "bench-online"
    root.mkdir(parents=True, exist_ok=True)
    prompts = _eval_prompts()
    only = os.environ.get("ONLINE_SIDES")
    out = {}
    for name in only.split(",") if only else SIDES:
        log(f"online_loop: {name}")
        out[name] = _side(name, root, s, prompts)
    return {
        "settings": {**s, "hidden": HIDDEN, "per_item": PER_ITEM, "bias": BIAS, "eval_prompts": len(prompts)},
        "sides": out,
    }


def markdown(result: dict) -> str:
    rows = []
    for name, r in result["sides"].items():
        scores = " -> ".join(f"v{k} {v:.2f}" for k, v in r["scores"].items())
        lab = " / ".join(f"{x['rm_accuracy_labels']:.2f}" for x in r["rounds"] if x["rm_accuracy_labels"] is not None)
        tru = " / ".join(f"{x['rm_accuracy_truth']:.2f}" for x in r["rounds"] if x["rm_accuracy_truth"] is not None)
        status = ", ".join(x["version_status"] for x in r["rounds"])
        rows.append([name, r["noise"], scores, lab, tru, status, r["wall_s"]])
    s = result["settings"]
    return (
        f"`rl-service online configs/online.yaml` for {s['rounds']} rounds per side; 5 simulated users "
        f"(hidden preference `{s['hidden']}`), each "
        f"comparison labelled by {s['per_item']}; hidden score on {s['eval_prompts']} held-out prompts "
        "(greedy, through the endpoint)\n\n"
        + table(
            [
                "side",
                "label noise",
                "hidden score per served version",
                "RM held-out acc (labels)",
                "RM held-out acc (truth)",
                "round versions",
                "wall s",
            ],
            rows,
        )  # fmt: skip
    )
