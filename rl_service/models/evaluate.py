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
    """Greedy completions (token ids, cut after EOS) for `prompts`, one left-padded batch."""
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    return greedy_generate_ids(model, prompt_ids, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens)


@torch.no_grad()
def greedy_generate_ids(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int | Sequence[int],
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy completions (token ids, cut after the first EOS) of token-id prompts, one
    left-padded batch on the model's device. `eos_id`: one id or several (any ends a row).

    Own loop rather than model.generate: no logits processors, stops as soon as every row
    has produced EOS (answers here are often a few tokens).
    """
    device = next(model.parameters()).device
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)
    input_ids, mask = (t.to(device) for t in left_pad(prompt_ids, pad_id))  # [B, P]
    B = input_ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]: left padding shifts positions
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past, next_pos = out.past_key_values, positions[:, -1:] + 1
    done = torch.zeros(B, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        tok = out.logits[:, -1].argmax(-1)  # [B]
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        generated.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True
        )
        past, next_pos = out.past_key_values, next_pos + 1
    if not generated:
        return [[] for _ in range(B)]
    gen = torch.stack(generated, dim=1).tolist()  # [B, N]
    stops = set(eos.tolist())
    return [row[: next(i for i, t in enumerate(row) if t in stops) + 1] if stops & set(row) else row for row in gen]


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
