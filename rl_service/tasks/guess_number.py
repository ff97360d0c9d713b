"""The guess-a-number environment as a training task: prompt stream items, held-out episodes,
a tokenizer corpus and the SFT warm start's data (naive play). Pure python here; the torch
parts of the warm start live in tasks/episode_sft.py and are imported only when building.

A prompt is one env instance: its text is the env's reset observation and its metadata names
the env, its kwargs and its reset seed, so a rollout worker rebuilds exactly that episode:

    Prompt(7, "guess 0-9: ", {"env": "guess_number", "env_seed": 912, "env_kwargs": {...}})

Held-out prompts use a fixed set of reset seeds (drawn with task.seed); training seeds never
hit it. With a range this small every secret appears in both sets: held-out here means
"fixed episodes", the same at every evaluation, not unseen secrets.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from rl_service.config import GuessNumberConfig
from rl_service.envs import ENV_KEY, ENV_KWARGS_KEY, ENV_SEED_KEY, GuessNumberEnv
from rl_service.envs.guess_number import naive_guess
from rl_service.types import Prompt

ENV_NAME = "guess_number"
_SEED_SPACE = 2**31
SFT_MAX_NEW_TOKENS = 4
"""Greedy turn length when the SFT warm start measures its play (a guess is <= 3 digits + EOS)."""


class GuessNumberTask:
    is_env = True
    """Prompts are environment episodes (the eval reports the env's success rate)."""

    def __init__(self, cfg: GuessNumberConfig):
        self.cfg = cfg
        self.env_kwargs: dict[str, Any] = {
            "low": cfg.guess_low,
            "high": cfg.guess_high,
            "max_turns": cfg.max_turns,
            "turn_penalty": cfg.turn_penalty,
        }
        eval_seeds = random.Random(f"guess_number/eval/{cfg.seed}").sample(range(_SEED_SPACE), cfg.num_eval)
        self._eval_seeds = frozenset(eval_seeds)
        self.eval_prompts: list[Prompt] = [self.make_prompt(s, -1 - i) for i, s in enumerate(eval_seeds)]
        """Fixed held-out episodes (prompt ids are negative: they never enter the ledger)."""
        self.train_items = None
        """No finite list: the prompt stream samples reset seeds with `sample_train`."""

    def new_env(self) -> GuessNumberEnv:
        return GuessNumberEnv(**self.env_kwargs)

    def sample_train(self, rng: random.Random) -> int:
        """A training reset seed (never a held-out one)."""
        while True:
            seed = rng.randrange(_SEED_SPACE)
            if seed not in self._eval_seeds:
                return seed

    def make_prompt(self, env_seed: int, prompt_id: int) -> Prompt:
        text = self.new_env().reset(env_seed)
        return Prompt(
            prompt_id=prompt_id,
            text=text,
            metadata={ENV_KEY: ENV_NAME, ENV_SEED_KEY: int(env_seed), ENV_KWARGS_KEY: dict(self.env_kwargs)},
        )

    def naive_episode(self, env_seed: int, rng: random.Random) -> list[tuple[str, str]]:
        """The warm start's play: [(guess, observation), ...] with uniform guesses in range,
        feedback ignored, until the env ends the episode (the last observation is terminal)."""
        env, turns = self.new_env(), []
        env.reset(env_seed)
        while True:
            guess = naive_guess(rng, env.low, env.high)
            obs, _, terminated, truncated, _ = env.step(guess)
            turns.append((guess, obs))
            if terminated or truncated:
                return turns

    def corpus(self, limit: int = 5000) -> list[str]:
        """Transcripts of naive play for training the tokenizer."""
        rng = random.Random(self.cfg.seed + 1)
        texts = []
        for _ in range(limit):
            seed = self.sample_train(rng)
            texts.append(self.new_env().reset(seed) + "".join(g + o for g, o in self.naive_episode(seed, rng)))
        return texts

    def transcript_ids(
        self, tokenizer: Any, env_seed: int, turns: list[tuple[str, str]]
    ) -> tuple[list[int], list[int]]:
        """Token ids of a played episode, built the way the rollout builds them (prompt with BOS,
        each guess + EOS, each non-terminal observation tokenised alone) and a 0/1 mask of the
        policy's tokens. -> (ids, policy_mask), same length."""
        encode: Callable[[str], list[int]] = lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids = list(tokenizer(self.new_env().reset(env_seed))["input_ids"])
        mask = [0] * len(ids)
        for i, (guess, obs) in enumerate(turns):
            g = encode(guess) + [tokenizer.eos_token_id]
            ids, mask = ids + g, mask + [1] * len(g)
            if i + 1 < len(turns):  # the terminal observation is never appended
                o = encode(obs)
                ids, mask = ids + o, mask + [0] * len(o)
        return ids, mask

    def probe_sequences(self, tokenizer: Any, count: int) -> list[list[int]]:
        """Fixed multi-turn token sequences (held-out episodes, naive play) for weight-sync checks."""
        rng = random.Random(f"guess_number/probe/{self.cfg.seed}")
        return [
            self.transcript_ids(tokenizer, p.metadata[ENV_SEED_KEY], self.naive_episode(p.metadata[ENV_SEED_KEY], rng))[
                0
            ]
            for p in self.eval_prompts[:count]
        ]

    # SFT warm start hooks (models/sft.py), torch imported only here.
    def sft_batch(self, tokenizer: Any, rng: random.Random, batch_size: int):
        from rl_service.tasks.episode_sft import naive_play_batch

        return naive_play_batch(self, tokenizer, rng, batch_size)

    def sft_metric(self, model: Any, tokenizer: Any) -> float:
        from rl_service.tasks.episode_sft import greedy_success_rate

        return greedy_success_rate(model, tokenizer, self.eval_prompts, SFT_MAX_NEW_TOKENS)
