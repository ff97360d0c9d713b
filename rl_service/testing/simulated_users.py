"""Simulated users of a served policy: they ask, compare two answers, and say which they prefer.

    python -m rl_service.testing.simulated_users --url http://127.0.0.1:8000 [--api-key KEY]
        [--users 5] [--rounds 20] [--noise 0.25] [--bias user-3:0.2 ...] [--seed 0]

Each user is one annotator (`user-<i>`). Per round it draws an addition prompt, asks the
endpoint with the official `openai` client for 2 sampled completions, scores both with the
HIDDEN preference (`--hidden closeness`, `hidden_score`: the closer the answer is to the true
sum, the better, an answer that is no number worst; `--hidden exact`: a right answer beats a
wrong one; `--hidden even`: an even number beats anything else), and posts to /v1/feedback a
preference for the better one with its annotator id, flipped with probability `noise` + its
own `bias` (an extra error rate, per annotator; a negative bias makes one more reliable). Equal
scores are not posted. With `--per-item K` each comparison is labelled by K users (the asker
and the next K - 1), as a crowd labels one item several times: the votes preference.noise=
annotators learns reliabilities from. The endpoint never sees the hidden preference: what it
learns of it comes through the labels.

`policy_score` is the quantity a demo tracks over versions: the mean hidden score of the served
policy's greedy answers on fixed prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass, field

import httpx

WORST = -100.0
"""Hidden score of an answer with no number in it (below any numeric answer's for 2-digit sums)."""


def hidden_score(prompt: str, completion: str) -> float:
    """-|answer - true sum| for an `a+b=` prompt; WORST when the completion starts with no number."""
    a, b = (int(x) for x in prompt.rstrip("=").split("+"))
    m = re.match(r"\s*(-?\d+)", completion)
    if m is None:
        return WORST
    return -float(min(abs(int(m.group(1)) - (a + b)), -WORST))


def exact_score(prompt: str, completion: str) -> float:
    """1 when the completion starts with the true sum, else 0: the hidden preference `exact` (a
    right answer beats a wrong one; two wrong ones, or two right ones, are a tie: not posted)."""
    a, b = (int(x) for x in prompt.rstrip("=").split("+"))
    m = re.match(r"\s*(-?\d+)", completion)
    return float(m is not None and int(m.group(1)) == a + b)


def even_score(prompt: str, completion: str) -> float:
    """1 when the completion starts with an even number, else 0: the hidden preference `even` (an
    arbitrary taste a small reward model can learn from a few hundred comparisons: it is in the
    last digit, no arithmetic needed; the demo of the online loop, docs/serving.md)."""
    m = re.match(r"\s*(-?\d+)", completion)
    return float(m is not None and int(m.group(1)) % 2 == 0)


HIDDEN = {"closeness": hidden_score, "exact": exact_score, "even": even_score}
"""The hidden preferences a population can have (`--hidden`)."""


def addition_prompt(rng: random.Random, digits: int = 2) -> str:
    hi = 10**digits - 1
    return f"{rng.randint(0, hi)}+{rng.randint(0, hi)}="


@dataclass
class UserStats:
    asked: int = 0
    posted: int = 0
    ties: int = 0
    flipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SimulatedUser:
    name: str
    noise: float
    """Probability of reporting the worse answer as preferred (noise + this annotator's bias)."""
    rng: random.Random
    stats: UserStats = field(default_factory=UserStats)
    hidden: str = "closeness"
    """Which HIDDEN preference this user judges by."""

    def round(
        self, client, http: httpx.Client, url: str, headers: dict, model: str = "policy", panel: tuple = ()
    ) -> dict | None:
        """One prompt, two samples, one preference posted by this user and one by each user of
        `panel` (other annotators labelling the same comparison, each with their own error
        rate); None on a tie or an error. -> this user's posted row."""
        prompt = addition_prompt(self.rng)
        self.stats.asked += 1
        try:
            resp = client.completions.create(
                model=model, prompt=prompt, n=2, max_tokens=6, temperature=1.0, seed=self.rng.getrandbits(31)
            )
        except Exception as err:  # the endpoint said no (503 under load, 4xx): counted, the user goes on
            self.stats.errors.append(f"completion: {type(err).__name__}: {err}"[:200])
            return None
        a, b = (c.text for c in resp.choices[:2])
        score = HIDDEN[self.hidden]
        sa, sb = score(prompt, a), score(prompt, b)
        if sa == sb:
            self.stats.ties += 1
            return None
        better, worse = (a, b) if sa > sb else (b, a)
        mine = self.label(http, url, headers, prompt, better, worse)
        for other in panel:
            other.label(http, url, headers, prompt, better, worse)
        return mine

    def label(self, http: httpx.Client, url: str, headers: dict, prompt: str, better: str, worse: str) -> dict | None:
        """Post this user's preference between two answers (flipped with probability `noise`)."""
        flip = self.rng.random() < self.noise
        chosen, rejected = (worse, better) if flip else (better, worse)
        body = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "annotator": self.name}
        r = http.post(f"{url}/v1/feedback", json=body, headers=headers, timeout=60)
        if r.status_code != 200:
            self.stats.errors.append(f"feedback: HTTP {r.status_code}: {r.text[:150]}")
            return None
        self.stats.posted += 1
        self.stats.flipped += int(flip)
        return {**body, "flipped": flip, "id": r.json()["id"]}


def make_users(
    n: int, noise: float, bias: dict[str, float], seed: int, hidden: str = "closeness"
) -> list[SimulatedUser]:
    """`user-0` .. `user-<n-1>`, each with its own seeded rng and error rate noise + bias[name]
    (clipped to [0, 1])."""
    users = []
    for i in range(n):
        name = f"user-{i}"
        rate = min(1.0, max(0.0, noise + bias.get(name, 0.0)))
        users.append(SimulatedUser(name, rate, random.Random(f"{seed}:{name}"), hidden=hidden))
    return users


def run_users(
    url: str, users: list[SimulatedUser], rounds: int, api_key: str | None = None, per_item: int = 1
) -> list[dict]:
    """Every user plays `rounds` rounds, taking turns; with `per_item` k > 1 each comparison is
    also labelled by the next k - 1 users (votes on one item, what preference.noise=annotators
    reads); -> the preferences posted by the askers."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=2, timeout=120)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    posted = []
    with httpx.Client() as http:
        for _ in range(rounds):
            for i, user in enumerate(users):
                panel = tuple(users[(i + j) % len(users)] for j in range(1, min(per_item, len(users))))
                out = user.round(client, http, url, headers, panel=panel)
                if out is not None:
                    posted.append(out)
    return posted


def policy_score(
    url: str, prompts: list[str], api_key: str | None = None, chunk: int = 16, hidden: str = "closeness"
) -> float:
    """Mean hidden score of the served policy's greedy answers to `prompts`."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=2, timeout=120)
    texts = []
    for i in range(0, len(prompts), chunk):  # the endpoint caps prompts per request (serve.max_prompts)
        resp = client.completions.create(model="policy", prompt=prompts[i : i + chunk], max_tokens=6, temperature=0)
        texts += [c.text for c in sorted(resp.choices, key=lambda c: c.index)]
    return sum(HIDDEN[hidden](p, t) for p, t in zip(prompts, texts)) / len(prompts)


def _bias(spec: str) -> tuple[str, float]:
    name, _, value = spec.partition(":")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bias {spec!r}: expected NAME:RATE, e.g. user-3:0.2") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Simulated users: ask the endpoint, post preferences.")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20, help="rounds per user")
    ap.add_argument("--noise", type=float, default=0.0, help="every user's chance of preferring the worse answer")
    ap.add_argument("--bias", type=_bias, action="append", default=[], metavar="NAME:RATE", help="one user's extra")
    ap.add_argument("--hidden", choices=sorted(HIDDEN), default="closeness", help="the users' hidden preference")
    ap.add_argument("--per-item", type=int, default=1, help="annotators labelling each comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0.0 <= args.noise <= 1.0:
        ap.error(f"--noise must be in [0, 1], got {args.noise}")
    users = make_users(args.users, args.noise, dict(args.bias), args.seed, args.hidden)
    posted = run_users(args.url.rstrip("/"), users, args.rounds, args.api_key, args.per_item)
    summary = {u.name: {**vars(u.stats), "errors": len(u.stats.errors), "rate": u.noise} for u in users}
    print(json.dumps({"posted": len(posted), "users": summary}, indent=2))
    errors = [e for u in users for e in u.stats.errors]
    if errors:
        print(f"{len(errors)} request(s) failed; first: {errors[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
