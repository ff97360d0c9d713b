"""HFEngine: transformers `generate` behind the Engine protocol (CPU, or CUDA when present).

Logprobs come from `output_logits=True` (the raw lm_head logits at each step), not
`output_scores` (after temperature/top_p), so they follow the project convention: raw,
temperature-1 logprobs, equal to vLLM's `raw_logprobs` and to the learner's recompute.
Prompts are left-padded in a batch; generate derives position ids from the attention mask,
so a padded prompt sees the same positions as it would alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rl_service.algo.logprobs import token_logprobs
from rl_service.algo.masking import left_pad, right_pad
from rl_service.rollout.engine import Completion, TokenDelta, cut_at_eos


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """logits: [R, V] raw -> one token per row: [R], from softmax(logits / T) cut to the top-p nucleus."""
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p >= top_p] = 0  # past the nucleus (its first token stays)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        from rl_service.ilql.heads import attach

        self.ilql = attach(self.model, model_path)
        """A `rl-service train-ilql` export: its logits are ILQL's, logits + beta * (Q - V)."""
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        # Unseeded calls draw their seed from here: reproducible per engine seed, and the
        # global torch RNG of the process is never consumed.
        self._rng = random.Random(seed)
        self.version = 0

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        return self.generate_ids(self.tokenizer(prompts)["input_ids"], n, max_new_tokens, temperature, top_p, seed)

    @torch.no_grad()
    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """Like `generate`, from token ids as given (left-padded here; nothing re-tokenised)."""
        greedy = temperature == 0
        prompt_ids = [tuple(ids) for ids in prompt_ids]
        input_ids, attention_mask = left_pad(prompt_ids, self.pad_id)  # [B, P]
        enc = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        per_prompt = 1 if greedy else n
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            num_return_sequences=per_prompt,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy else 0,  # 0 = no top-k; None would fall back to the default 50
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        call_seed = seed if seed is not None else self._rng.randrange(2**63)
        devices = (
            [self.device.index if self.device.index is not None else torch.cuda.current_device()]
            if self.device.type == "cuda"
            else []
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(call_seed)
            out = self.model.generate(**enc, generation_config=gen_cfg)
        new_ids = out.sequences[:, enc["input_ids"].shape[1] :]  # [B*k, T]
        logits = torch.stack(out.logits, dim=1).float()  # [B*k, T, V]
        logprobs = logits.log_softmax(-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)  # [B*k, T]
        result: list[list[Completion]] = []
        for i, pids in enumerate(prompt_ids):
            group = []
            for row in range(i * per_prompt, (i + 1) * per_prompt):
                ids, reason = cut_at_eos(new_ids[row].tolist(), self.eos_id)
                group.append(
                    Completion(
                        prompt_ids=pids,
                        token_ids=tuple(ids),
                        logprobs=tuple(logprobs[row, : len(ids)].tolist()),
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason=reason,
                    )
                )
            result.append(group * n if greedy else group)
        return result

    @torch.no_grad()
    def stream(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[TokenDelta]:
        """A decode loop over the KV cache, one forward per token, yielding each token as it is
        made. Greedy takes the argmax of the logits `generate` computes -> the same tokens.
        Sampling draws from its own torch.Generator (the process RNG is never consumed); it is
        reproducible with `seed` but not draw-for-draw equal to `generate`'s sampler."""
        greedy = temperature == 0
        per_prompt = 1 if greedy else n
        prompt_ids = [self.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
        rows = [ids for ids in prompt_ids for _ in range(per_prompt)]
        ids, mask = left_pad(rows, self.pad_id)  # [R, P]
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [R, P]: padding does not shift positions
        gen = torch.Generator(self.device).manual_seed(seed if seed is not None else self._rng.randrange(2**63))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        live = [True] * len(rows)
        for t in range(max_new_tokens):
            logits = out.logits[:, -1].float()  # [R, V]
            tok = logits.argmax(-1) if greedy else _sample(logits, temperature, top_p, gen)  # [R]
            lp = logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)  # [R] raw logprobs
            for r in (r for r in range(len(rows)) if live[r]):
                token = int(tok[r])
                reason = "stop" if token == self.eos_id else "length" if t == max_new_tokens - 1 else None
                i, j = divmod(r, per_prompt)
                for k in range(n) if greedy else (j,):  # greedy: one row stands for n copies
                    yield TokenDelta(i * n + k, (token,), (float(lp[r]),), reason)
                live[r] = reason is None
            if not any(live):
                break
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)  # [R, P+t+1]
            positions = positions[:, -1:] + 1  # [R, 1]
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Right-padded forward pass; logprobs: [B, L-1] (token t given tokens < t)."""
        if not sequences:
            return []
        ids, mask = right_pad(sequences, self.pad_id)  # [B, L]
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()  # [B, L, V]
        logprobs = token_logprobs(logits[:, :-1], ids[:, 1:])  # [B, L-1]
        return [logprobs[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if unexpected or set(missing) - tied:
            raise KeyError(
                f"state dict does not match the model: missing {sorted(set(missing) - tied)}, "
                f"unexpected {sorted(unexpected)}"
            )
        self.version = version
