"""Torch side of the warm start for environment tasks: batches of naive play, and greedy
episodes with an in-memory HF model (through the same `run_episodes` as the rollout worker)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from rl_service.algo.masking import left_pad
from rl_service.envs import run_episodes
from rl_service.rollout.engine import Completion, cut_at_eos
from rl_service.types import Prompt


def naive_play_batch(task: Any, tokenizer: Any, rng: random.Random, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Right-padded transcripts of naive play: input_ids [B, T], attention_mask [B, T],
    labels [B, T] (-100 except on the policy's tokens: each guess and its EOS)."""
    seqs = []
    for _ in range(batch_size):
        seed = task.sample_train(rng)
        seqs.append(task.transcript_ids(tokenizer, seed, task.naive_episode(seed, rng)))
    T = max(len(ids) for ids, _ in seqs)
    ids = torch.full((batch_size, T), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, T), -100, dtype=torch.long)
    mask = torch.zeros((batch_size, T), dtype=torch.long)
    for i, (s, m) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        policy = torch.tensor(m, dtype=torch.bool)
        labels[i, : len(s)] = torch.where(policy, ids[i, : len(s)], torch.full_like(policy, -100, dtype=torch.long))
    return ids, mask, labels


class GreedyHF:
    """Greedy `generate_ids` over an in-memory HF causal LM (left padding, full forward per token:
    episodes here are a few dozen tokens)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    @torch.no_grad()
    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        assert temperature == 0, "GreedyHF is greedy only"
        ids, mask = left_pad(prompt_ids, self.pad_id)  # [B, P]
        new: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            tok = logits.argmax(-1)  # [B]
            new.append(tok)
            logps.append(logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1))
            ids, mask = torch.cat([ids, tok[:, None]], 1), torch.cat([mask, torch.ones_like(tok)[:, None]], 1)
        gen, lp = torch.stack(new, 1).tolist(), torch.stack(logps, 1).tolist()
        out = []
        for p, row, row_lp in zip(prompt_ids, gen, lp):
            toks, reason = cut_at_eos(row, self.eos_id)
            c = Completion(
                prompt_ids=tuple(p),
                token_ids=tuple(toks),
                logprobs=tuple(row_lp[: len(toks)]),
                text=self.tokenizer.decode(toks, skip_special_tokens=True),
                finish_reason=reason,
            )
            out.append([c] * n)
        return out


def greedy_success_rate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int) -> float:
    """Share of `prompts` (env episodes) the greedy policy solves."""
    was_training = model.training
    model.eval()
    groups = run_episodes(
        GreedyHF(model, tokenizer),
        tokenizer,
        [p.metadata for p in prompts],
        n=1,
        max_new_tokens=max_new_tokens,
        max_tokens=model.config.max_position_embeddings,
        temperature=0.0,
    )
    model.train(was_training)
    return sum(g[0].summary()["env_success"] for g in groups) / max(len(groups), 1)
