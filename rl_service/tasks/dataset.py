"""The dataset task (`task.name: dataset`): prompts from your own files, scored by the run's reward.

    task = DatasetTask(cfg.task)       # reads and checks every row of task.train / task.eval
    task.bind(tokenizer, max_tokens)   # token ids (chat template or plain), too-long prompts dropped
    task.make_prompt(i, prompt_id)     # training row i as a Prompt (token ids + metadata)
    task.eval_prompts                  # the held-out rows as Prompts
    task.sft_examples()                # (prompt ids, response ids) pairs for `rl-service sft`

Tokenization: a row's messages always go through the tokenizer's chat template with the
generation prompt; a string prompt does when `task.chat_template` is true (as one user turn),
else it is tokenized as the engine would tokenize it (special tokens added: BOS). Those ids are
what the engine generates from and the learner trains on; `Prompt.text` is the rendered prompt
the reward function gets. Training order is tasks/stream.py's: a seeded permutation of the kept
rows per epoch, resumable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rl_service.config import DatasetConfig
from rl_service.tasks.data_files import DataError, RowPrompt, read_rows, row_prompt
from rl_service.types import Prompt


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: tuple[int, ...]
    """The prompt exactly as generation sees it (chat template with the generation prompt)."""
    response_ids: tuple[int, ...]
    """The target completion, ending with the tokenizer's EOS; the loss is on these only."""


@dataclass(frozen=True)
class _Encoded:
    text: str
    ids: tuple[int, ...]


class DatasetTask:
    """Rows of `cfg.train` / `cfg.eval`, checked at construction, tokenized by `bind`."""

    is_env = False

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        train = _read(cfg.train, cfg)
        if cfg.eval is not None:
            evals = _read(cfg.eval, cfg)
        else:  # hold out num_eval rows of the training file, seeded
            if cfg.num_eval >= len(train):
                raise DataError(f"{cfg.train}: task.num_eval={cfg.num_eval} leaves no training rows of {len(train)}")
            held = set(random.Random(cfg.seed).sample(range(len(train)), cfg.num_eval))
            evals = [r for i, r in enumerate(train) if i in held]
            train = [r for i, r in enumerate(train) if i not in held]
        self._train_rows: list[RowPrompt] = train
        self._eval_rows: list[RowPrompt] = evals[: cfg.num_eval] if cfg.eval is not None else evals
        self._tokenizer = None
        self._train: list[_Encoded] = []
        self._train_rows_kept: list[RowPrompt] = []
        self.eval_prompts: list[Prompt] = []
        self._eval_rows_kept: list[RowPrompt] = []
        self.dropped = {"train": 0, "eval": 0}
        """Rows dropped by `bind` for a prompt over the token limit, per split."""

    # ------------------------------------------------------------------ tokenizing
    def bind(self, tokenizer, max_prompt_tokens: int | None = None) -> DatasetTask:
        """Tokenize every row with the policy's `tokenizer`; drop (and count) prompts longer than
        task.max_prompt_tokens or `max_prompt_tokens` (the room the model's context leaves)."""
        limits = [n for n in (self.cfg.max_prompt_tokens, max_prompt_tokens) if n is not None]
        limit = min(limits) if limits else None
        self._tokenizer = tokenizer
        self._train, self._train_rows_kept = self._encode_split(self._train_rows, limit, "train")
        evals, self._eval_rows_kept = self._encode_split(self._eval_rows, limit, "eval")
        self.eval_prompts = [
            Prompt(prompt_id=i, text=e.text, metadata=r.metadata, token_ids=e.ids)
            for i, (e, r) in enumerate(zip(evals, self._eval_rows_kept))
        ]
        for split, kept, path in (("train", self._train, self.cfg.train), ("eval", evals, self.cfg.eval)):
            if not kept:
                raise DataError(
                    f"{path or self.cfg.train}: every {split} row was dropped: prompts over {limit} tokens "
                    "(raise task.max_prompt_tokens or the model's context)"
                )
        return self

    def _encode_split(self, rows: list[RowPrompt], limit: int | None, split: str):
        kept, kept_rows = [], []
        for row in rows:
            enc = self.encode(row)
            if limit is not None and len(enc.ids) > limit:
                self.dropped[split] += 1
                continue
            kept.append(enc)
            kept_rows.append(row)
        return kept, kept_rows

    def encode(self, row: RowPrompt) -> _Encoded:
        """The prompt's rendered text and token ids (see the module docstring for the rule)."""
        tok = self._tokenizer
        turns = row.messages
        if turns is None and self.cfg.chat_template:
            turns = ({"role": "user", "content": row.text},)
        if turns is None:
            return _Encoded(row.text, tuple(tok(row.text)["input_ids"]))
        if not getattr(tok, "chat_template", None):
            what = "messages need" if row.messages is not None else "task.chat_template: true needs"
            raise DataError(f"{row.where}: {what} a chat template, and the model's tokenizer has none")
        text = tok.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=True)
        return _Encoded(text, template_ids(tok, list(turns), add_generation_prompt=True))

    # ------------------------------------------------------------------ what the stream and eval use
    @property
    def train_items(self) -> list[int]:
        """Indices of the kept training rows: what the prompt stream permutes each epoch."""
        return list(range(len(self._train)))

    def make_prompt(self, index: int, prompt_id: int) -> Prompt:
        enc, row = self._train[index], self._train_rows_kept[index]
        return Prompt(prompt_id=prompt_id, text=enc.text, metadata=row.metadata, token_ids=enc.ids)

    def sample_train(self, rng: random.Random) -> int:
        return rng.randrange(len(self._train))

    @property
    def num_train(self) -> int:
        return len(self._train)

    def summary(self) -> dict[str, int]:
        """Row counts for summary.json: kept rows and rows dropped as too long, per split."""
        return {
            "data/train_rows": len(self._train),
            "data/eval_rows": len(self.eval_prompts),
            "data/dropped_long_train": self.dropped["train"],
            "data/dropped_long_eval": self.dropped["eval"],
        }

    def probe_sequences(self, count: int) -> list[list[int]]:
        """Eval prompts + EOS: fixed sequences every weight sync is verified on."""
        eos = self._tokenizer.eos_token_id
        return [list(p.token_ids) + [eos] for p in self.eval_prompts[:count]]

    def eval_references(self) -> list[str]:
        """The reference text of every kept eval row (`task.reference_key`, or the row's response),
        in `eval_prompts` order; DataError naming the first row that has none (or a non-string)."""
        key, out = self.cfg.reference_key, []
        for row in self._eval_rows_kept:
            ref = row.response if key is None else row.metadata.get(key)
            if not isinstance(ref, str):
                if key is None:
                    why = f"no response (field {self.cfg.response_key!r} or a trailing assistant turn"
                    why += "; or set task.reference_key)"
                elif ref is None:
                    why = f"field {key!r} is missing"
                else:
                    why = f"field {key!r} is {type(ref).__name__} {ref!r:.40}, not a string"
                raise DataError(f"{row.where}: eval.metrics need a reference text: {why}")
            out.append(ref)
        return out

    def corpus(self, limit: int = 20_000) -> list[str]:
        """Texts to train a tokenizer on (a built model): prompts, responses and string fields."""
        out = []
        for row in self._train_rows[:limit]:
            parts = [row.text] if row.text is not None else [m["content"] for m in row.messages]
            parts += [row.response or ""] + [v for v in row.metadata.values() if isinstance(v, str)]
            out.append(" ".join(p for p in parts if p))
        return out

    # ------------------------------------------------------------------ SFT
    def sft_examples(self, split: str = "train") -> list[SFTExample]:
        """(prompt ids, response ids + EOS) of every kept row of `split`; DataError when a row has
        no response (task.response_key, or a trailing assistant turn)."""
        rows = self._train_rows_kept if split == "train" else self._eval_rows_kept
        encoded = self._train if split == "train" else [_Encoded(p.text, p.token_ids) for p in self.eval_prompts]
        out = []
        for enc, row in zip(encoded, rows):
            if row.response is None:
                raise DataError(
                    f"{row.where}: no response for SFT (field {self.cfg.response_key!r}, or messages "
                    "ending in an assistant turn)"
                )
            out.append(SFTExample(enc.ids, self._response_ids(row, enc)))
        return out

    def _response_ids(self, row: RowPrompt, prompt: _Encoded) -> tuple[int, ...]:
        tok, eos = self._tokenizer, self._tokenizer.eos_token_id
        templated = row.messages is not None or self.cfg.chat_template
        if templated:
            turns = list(row.messages or ({"role": "user", "content": row.text},))
            full = template_ids(tok, turns + [{"role": "assistant", "content": row.response}])
            # The template's own assistant turn (its end-of-turn tokens too) when the prompt is a
            # prefix of the whole conversation; cut after EOS (a trailing newline is not a target).
            if tuple(full[: len(prompt.ids)]) == prompt.ids:
                tail = list(full[len(prompt.ids) :])
                return tuple(tail[: tail.index(eos) + 1] if eos in tail else tail + [eos])
        return tuple(tok(row.response, add_special_tokens=False)["input_ids"]) + (eos,)


def template_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> tuple[int, ...]:
    """`apply_chat_template(..., tokenize=True)` as a tuple of ids (newer transformers return a dict)."""
    out: Any = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return tuple(int(t) for t in out)


def _read(path: str, cfg: DatasetConfig) -> list[RowPrompt]:
    rows = read_rows(path)  # row N: the N-th JSONL line / CSV data row / Parquet row
    return [row_prompt(r, cfg, f"{path}: row {n}") for n, r in enumerate(rows, start=1)]
