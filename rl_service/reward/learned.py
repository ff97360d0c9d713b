"""Rewards computed by models: a learned reward model and a teacher LM (on-policy distillation).

    rm = RewardModel("runs/rm/model")              # the directory `rl-service train-rm` writes
    rm.score(["37+48="], ["85"])                   # -> [r]: one batched forward, CPU, fp32
    teacher = TeacherLM("runs/teacher/model")
    teacher.token_logprobs([prompt_ids], [response_ids])  # -> [[logp of each response token]]

Both load plain HF directories on CPU in fp32 and run without gradients. The reward model
reads `prompt + completion` as text, encoded exactly as `train-rm` encodes its pairs
(`rm_inputs`); the teacher reads the student's token ids as generated (it must share the
student's tokenizer: models built by this project for the same task do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rl_service.algo.logprobs import token_logprobs as logprobs_of
from rl_service.algo.masking import right_pad


def rm_inputs(tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """BOS + text, right-padded (the score is read at the last non-pad token). -> input_ids, attention_mask: [N, L]."""
    enc = tokenizer(list(texts), padding=True, padding_side="right", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class RewardModel:
    """A 1-output `AutoModelForSequenceClassification` directory used as a reward function."""

    def __init__(self, model_dir: str, batch_size: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_dir}: a reward model has num_labels=1 (got {self.model.config.num_labels})")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Reward of each prompt + completion: N texts -> N floats (chunks of batch_size rows)."""
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = rm_inputs(self.tokenizer, texts[i : i + self.batch_size])
            out += self.model(**enc).logits[:, 0].float().tolist()  # HF pools the last non-pad token
        return out


class TeacherLM:
    """A causal LM whose logprob of each generated token rewards the student (distillation)."""

    def __init__(self, model_dir: str, pad_id: int | None = None):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.pad_id = pad_id if pad_id is not None else (self.model.config.pad_token_id or 0)

    @torch.no_grad()
    def token_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Teacher logprob of each response token given everything before it.

        One right-padded forward over prompt + response: row b -> len(response_ids[b]) floats.
        """
        rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        if not rows:
            return []
        ids, mask = right_pad(rows, self.pad_id)  # [B, T]
        lp = logprobs_of(self.model(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])  # [B, T-1]
        # Token j of row b is predicted at column j-1; the response starts at j = len(prompt).
        return [
            lp[b, len(p) - 1 : len(p) - 1 + len(r)].tolist() for b, (p, r) in enumerate(zip(prompt_ids, response_ids))
        ]
