"""Multi-turn rollouts: run text-environment episodes on token ids, never re-tokenising.

Turn 1 generates from the tokenised prompt (the env's reset observation, BOS included).
Every later turn's input is the previous input + the generated ids exactly as generated
(EOS included when produced) + the tokenised observation. So the sequence the learner
trains on is token for token the one the policy sampled, and one `Episode` is one sample:

    prompt_ids    = tok(reset_obs)                          (BOS included)
    response_ids  = gen_1 + tok(obs_1) + gen_2 + tok(obs_2) + ... + gen_k
    response_mask = 1...1 + 0...0      + 1...1 + 0...0      + ... + 1...1   (1 = policy token)
    logprobs      = engine logprobs on policy tokens, 0.0 on env tokens

The last observation (` correct`, ` out of turns`) is not appended: nothing is generated
after it. An episode ends when the env says terminated/truncated, or when the next turn
would not fit in `max_tokens` (the model's context): then it is truncated with
finish_reason `length`. Episodes of a prompt share its reset seed (the same secret), so a
group of n episodes is a fair comparison for group baselines.

Pure python over the engine's `generate_ids`; no torch, ray or vllm imports.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rl_service.envs.base import TextEnv, env_from_metadata


class IdsEngine(Protocol):
    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Any]]:
        """`n` Completions (token_ids, logprobs, text, finish_reason) per id prompt."""
        ...


@dataclass
class Episode:
    prompt_text: str
    prompt_ids: list[int]
    env: TextEnv
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] = field(default_factory=list)
    episode_return: float = 0.0
    turns: int = 0
    done: bool = False
    finish_reason: str = "stop"
    """`stop`: the env ended it (terminated or truncated); `length`: the token budget did."""
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    """The env's info from the last step (e.g. `success`)."""

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    def summary(self) -> dict[str, Any]:
        """What the reward function and the eval read (goes into Sample.metadata)."""
        return {
            "env_return": self.episode_return,
            "env_turns": self.turns,
            "env_success": bool(self.info.get("success", False)),
            "env_terminated": self.terminated,
            "env_truncated": self.truncated,
        }


def _turn_seed(seed: int | None, turn: int) -> int | None:
    return None if seed is None else random.Random(f"episodes/{seed}/{turn}").getrandbits(62)


def _apply(ep: Episode, completion: Any, tokenizer: Any, max_new_tokens: int, max_tokens: int) -> None:
    """Append one generated turn, step the env, append its observation (or end the episode)."""
    ids = list(completion.token_ids)
    ep.response_ids += ids
    ep.response_mask += [1] * len(ids)
    ep.response_logprobs += [float(x) for x in completion.logprobs]
    obs, reward, terminated, truncated, info = ep.env.step(completion.text)
    ep.turns += 1
    ep.episode_return += float(reward)
    ep.info = dict(info)
    if terminated or truncated:
        ep.done, ep.terminated, ep.truncated = True, bool(terminated), bool(truncated)
        return
    obs_ids = list(tokenizer(obs, add_special_tokens=False)["input_ids"])
    if len(ep.context) + len(obs_ids) + max_new_tokens > max_tokens:
        ep.done, ep.truncated, ep.finish_reason = True, True, "length"
        return
    ep.response_ids += obs_ids
    ep.response_mask += [0] * len(obs_ids)
    ep.response_logprobs += [0.0] * len(obs_ids)


def run_episodes(
    engine: IdsEngine,
    tokenizer: Any,
    metadatas: Sequence[dict[str, Any]],
    n: int,
    max_new_tokens: int,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[list[Episode]]:
    """`n` episodes per prompt (each prompt's metadata names its env and reset seed),
    grouped by prompt. Every turn is ONE batched engine call over all running episodes.

    tokenizer: HF-style, `tokenizer(text, add_special_tokens=...)["input_ids"]`.
    max_tokens: context budget (prompt + response) of one episode.
    """
    groups: list[list[Episode]] = []
    for meta in metadatas:
        group = []
        for _ in range(n):
            env, env_seed = env_from_metadata(meta)
            text = env.reset(env_seed)
            group.append(Episode(prompt_text=text, prompt_ids=list(tokenizer(text)["input_ids"]), env=env))
        if len(group[0].prompt_ids) + max_new_tokens > max_tokens:
            raise ValueError(
                f"prompt {text!r} ({len(group[0].prompt_ids)} tokens) + max_new_tokens "
                f"{max_new_tokens} exceeds the episode budget of {max_tokens} tokens"
            )
        groups.append(group)
    if not groups:
        return []
    # Turn 1: n samples per prompt from one request each (the engine spreads the seed).
    first = engine.generate_ids(
        [g[0].prompt_ids for g in groups],
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=_turn_seed(seed, 0),
    )
    for group, completions in zip(groups, first):
        for ep, c in zip(group, completions):
            _apply(ep, c, tokenizer, max_new_tokens, max_tokens)
    turn = 1
    while True:
        running = [ep for g in groups for ep in g if not ep.done]
        if not running:
            return groups
        outs = engine.generate_ids(
            [ep.context for ep in running],
            n=1,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=_turn_seed(seed, turn),
        )
        for ep, out in zip(running, outs):
            _apply(ep, out[0], tokenizer, max_new_tokens, max_tokens)
        turn += 1
