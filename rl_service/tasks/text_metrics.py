"""Held-out text metrics: ROUGE-L and BLEU (the standard packages), perplexity (from logprobs).

    rouge_l(completions, references)              mean ROUGE-L F1 over rows, 0..1 (rouge-score)
    bleu(completions, references, tokenize, n)    corpus BLEU-n, 0..100 (sacrebleu)
    perplexity(scored)                            exp(mean NLL per token) of lists of token logprobs
    TextEval.prepare(cfg, task, tokenizer, ctx)   what a run's `eval.metrics` need, read and checked
                                                  before Ray starts (DataError: one line, exit 2)

Perplexity is token-weighted over the whole set (exp of total NLL / total scored tokens, as
HF's and lm-eval's corpus perplexity), so long texts count for more than short ones. A reference
is scored as a completion of its prompt: the prompt's tokens are context only, the reference's
(tokenized without special tokens, no EOS appended) are scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rl_service.tasks.data_files import DataError, read_rows


def rouge_l(completions: list[str], references: list[str]) -> float:
    """Mean over rows of ROUGE-L F1 (longest common subsequence of words, Porter-stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(completions, references, strict=True)]
    return sum(scores) / len(scores)


def bleu(completions: list[str], references: list[str], tokenize: str = "13a", max_order: int = 4) -> float:
    """Corpus BLEU of the completions against one reference each: n-grams up to `max_order`,
    sacrebleu's defaults otherwise (exp smoothing, brevity penalty)."""
    from sacrebleu.metrics import BLEU

    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    metric = BLEU(tokenize=tokenize, max_ngram_order=max_order)
    return float(metric.corpus_score(completions, [references]).score)


def perplexity(scored: list[list[float]]) -> float:
    """exp(-sum of logprobs / number of tokens) over every sequence's scored tokens."""
    count = sum(len(s) for s in scored)
    if count == 0:
        raise ValueError("perplexity of no tokens")
    return math.exp(-sum(sum(s) for s in scored) / count)


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids and the index of the first token whose logprob counts (>= 1: it needs a context)."""

    ids: tuple[int, ...]
    start: int

    def take(self, logprobs: list[float]) -> list[float]:
        """The counted part of an engine's `score` row (logprob of token t given < t, t = 1..)."""
        return logprobs[self.start - 1 :]


@dataclass(frozen=True)
class TextEval:
    """The inputs of a run's `eval.metrics`: reference texts and the sequences perplexity scores."""

    metrics: tuple[str, ...]
    bleu_tokenize: str
    bleu_max_order: int
    references: tuple[str, ...] | None
    perplexity_sequences: tuple[ScoredSequence, ...] | None

    @classmethod
    def prepare(cls, eval_cfg, task, tokenizer, context: int) -> TextEval | None:
        """None when no metric is asked for. `task`: a bound dataset task when references are
        needed; `context`: the model's context length (texts are cut to it)."""
        if not eval_cfg.metrics:
            return None
        refs = tuple(task.eval_references()) if eval_cfg.needs_references else None
        seqs = None
        if "perplexity" in eval_cfg.metrics:
            if eval_cfg.perplexity_file is not None:
                texts = read_texts(eval_cfg.perplexity_file, eval_cfg.perplexity_key, eval_cfg.max_perplexity_texts)
                seqs = text_sequences(texts, tokenizer, context)
            else:
                prompts = [p.token_ids for p in task.eval_prompts]
                seqs = reference_sequences(prompts, refs, tokenizer, context)
        if seqs is not None and not seqs:
            raise DataError("eval.metrics perplexity: no text has a token to score")
        return cls(tuple(eval_cfg.metrics), eval_cfg.bleu_tokenize, eval_cfg.bleu_max_order, refs, seqs)

    def completion_metrics(self, completions: list[str]) -> dict[str, float]:
        """`eval/rouge_l` and `eval/bleu` (those asked for) of greedy completions in eval order."""
        out = {}
        if "rouge_l" in self.metrics:
            out["eval/rouge_l"] = rouge_l(completions, list(self.references))
        if "bleu" in self.metrics:
            out["eval/bleu"] = bleu(completions, list(self.references), self.bleu_tokenize, self.bleu_max_order)
        return out


def reference_sequences(prompt_ids, references, tokenizer, context: int) -> tuple[ScoredSequence, ...]:
    """Each prompt followed by its reference's tokens, the reference scored; cut to `context`
    (a reference that does not fit even one token is left out)."""
    out = []
    for ids, ref in zip(prompt_ids, references, strict=True):
        full = (tuple(ids) + tuple(tokenizer(ref, add_special_tokens=False)["input_ids"]))[: context - 1]
        if len(full) > len(ids) >= 1:
            out.append(ScoredSequence(full, len(ids)))
    return tuple(out)


def text_sequences(texts: list[str], tokenizer, context: int) -> tuple[ScoredSequence, ...]:
    """Each text tokenized as a prompt (special tokens added), cut to `context`, every token after
    the first scored; texts of one token are left out."""
    out = []
    for text in texts:
        ids = tuple(tokenizer(text)["input_ids"])[: context - 1]
        if len(ids) >= 2:
            out.append(ScoredSequence(ids, 1))
    return tuple(out)


def read_texts(path: str, key: str = "text", limit: int | None = None) -> list[str]:
    """The first `limit` texts of a perplexity file: non-empty lines of a `.txt`, else the `key`
    column of each row (only the rows used are checked)."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise DataError(f"{path}: no such file")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 text (byte {err.start})") from None
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for n, row in enumerate(read_rows(path)[:limit], start=1):
            value = row.get(key)
            if not isinstance(value, str):
                got = "missing" if value is None else f"{type(value).__name__}, not a string"
                raise DataError(f"{path}: row {n}: field {key!r} (eval.perplexity_key) is {got}")
            texts.append(value)
    if not texts:
        raise DataError(f"{path}: no text for eval.metrics perplexity")
    return texts[:limit]
