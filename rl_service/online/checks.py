"""What a candidate version must pass, before it is published and after the endpoint swapped it in.

    round_problems(metrics rows, online)    guards on the PPO round's own log: KL to the served
                                            version, reward not collapsing
    greedy_answers(model_dir, prompts, n)   the candidate's (or served version's) greedy answers,
                                            plain transformers in the service process
    endpoint_answers(url, ...)              the live endpoint's greedy answers, over HTTP
    mean_score(rm_dir, prompts, answers)    the adopted reward model's mean score of them

The held-out check compares the candidate with the served version on the canary prompts (users'
prompts that neither the reward model nor PPO trained on), both scored by the same reward model;
the live check compares what the endpoint answers after the swap with what was checked.
"""

from __future__ import annotations

import math

from rl_service.config.online import OnlineConfig


def round_problems(rows: list[dict], oc: OnlineConfig) -> list[str]:
    """Guard failures of a finished PPO round (its metrics.jsonl rows, one per step)."""
    if not rows:
        return ["the PPO round logged no step"]
    problems = []
    kls = [r["kl/mean"] for r in rows if isinstance(r.get("kl/mean"), (int, float))]
    if not kls:
        problems.append("the PPO round logged no kl/mean (the KL guard cannot pass unmeasured)")
    elif max(kls) > oc.max_kl:
        problems.append(f"kl/mean reached {max(kls):.4f} > online.max_kl={oc.max_kl}")
    first, last = rows[0], rows[-1]
    r0, r1, s0 = first.get("reward/mean"), last.get("reward/mean"), first.get("reward/std") or 0.0
    if isinstance(r0, (int, float)) and isinstance(r1, (int, float)):
        if not math.isfinite(r1) or r1 < r0 - oc.max_reward_drop * max(s0, 1e-6):
            problems.append(
                f"reward/mean fell {r0:.3f} -> {r1:.3f} (more than online.max_reward_drop="
                f"{oc.max_reward_drop} x its first-step std {s0:.3f})"
            )
    return problems


def greedy_answers(model_dir: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completion text of each prompt: the project's HF engine (transformers), on the CPU."""
    from rl_service.rollout.hf_engine import HFEngine

    engine = HFEngine(model_dir, device="cpu")
    return [group[0].text for group in engine.generate(prompts, 1, max_new_tokens, temperature=0)]


def endpoint_answers(
    url: str, prompts: list[str], max_tokens: int, api_key: str | None, model: str, chunk: int
) -> tuple[list[str], int]:
    """(greedy answers of the live endpoint, the x-policy-version that produced the last chunk).
    Raises on any failed request: an endpoint that fails its canary is not healthy."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    answers, version = [], -1
    with httpx.Client(timeout=120) as http:
        for i in range(0, len(prompts), chunk):
            body = {"model": model, "prompt": prompts[i : i + chunk], "max_tokens": max_tokens, "temperature": 0}
            r = http.post(f"{url}/v1/completions", json=body, headers=headers)
            r.raise_for_status()
            answers += [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
            version = int(r.headers.get("x-policy-version", -1))
    return answers, version


def mean_score(rm_dir: str, prompts: list[str], answers: list[str]) -> float:
    from rl_service.reward.learned import RewardModel

    scores = RewardModel(rm_dir).score(prompts, answers)
    return sum(scores) / len(scores)
