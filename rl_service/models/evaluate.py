"""Held-out greedy exact-match accuracy with a plain HF model (batched, KV cache)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rl_service.algo.masking import left_pad
from rl_service.tasks.addition import Problem, verify


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int
) -> list[list[int]]:
    """Greedy completions (token ids, cut after EOS) for `prompts`, one left-padded batch.

    Own loop rather than model.generate: no logits processors, stops as soon as every row
    has produced EOS (answers here are 1-4 tokens).
    """
    input_ids, mask = left_pad(tokenizer(list(prompts))["input_ids"], tokenizer.pad_token_id)  # [B, P]
    eos = tokenizer.eos_token_id
    B = input_ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]: left padding shifts positions
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past, next_pos = out.past_key_values, positions[:, -1:] + 1
    done = torch.zeros(B, dtype=torch.bool)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        tok = out.logits[:, -1].argmax(-1)  # [B]
        tok = torch.where(done, torch.full_like(tok, tokenizer.pad_token_id), tok)
        generated.append(tok)
        done |= tok == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True
        )
        past, next_pos = out.past_key_values, next_pos + 1
    gen = torch.stack(generated, dim=1).tolist()  # [B, N]
    return [row[: row.index(eos) + 1] if eos in row else row for row in gen]


def greedy_accuracy_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    max_new_tokens: int = 8,
    batch_size: int = 256,
) -> float:
    """Fraction of `problems` whose greedy completion (EOS cut, specials skipped) verifies."""
    was_training = model.training
    model.eval()
    correct = 0.0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        completions = greedy_generate(model, tokenizer, [p.prompt for p in chunk], max_new_tokens)
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        correct += sum(verify(t, p.answer) for t, p in zip(texts, chunk))
    model.train(was_training)
    return correct / max(len(problems), 1)
