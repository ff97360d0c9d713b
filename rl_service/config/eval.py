"""`eval:` what the held-out evaluation measures beyond `eval/accuracy` (rl_service/tasks/text_metrics.py).

When it runs is `train.eval_every` (and always at the start and the end of a run)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rl_service.config.base import Section

TextMetric = Literal["rouge_l", "bleu", "perplexity"]


class EvalConfig(Section):
    metrics: list[TextMetric] = []
    """Extra held-out metrics, each logged as `eval/<metric>` at every evaluation and as
    `eval/<metric>_start` / `_end` in summary.json:
    `rouge_l`: mean ROUGE-L F1 (package `rouge-score`, stemming on) of the greedy completion
    against the row's reference (`task.reference_key`), 0..1;
    `bleu`: corpus BLEU (package `sacrebleu`, `eval.bleu_tokenize`, `bleu_max_order`) of the greedy
    completions against the references, 0..100;
    `perplexity`: exp of the policy's mean negative log-likelihood per token of the texts in
    `eval.perplexity_file`, or, without one, of each reference given its prompt."""
    bleu_tokenize: str = "13a"
    """sacrebleu's tokenizer: `13a` (its default, word-level), `char` (characters), `intl`, `zh`,
    `none`..."""
    bleu_max_order: int = Field(4, ge=1, le=8)
    """Longest n-gram BLEU counts (4 = the standard BLEU-4). Corpus BLEU is 0 when no completion
    has an n-gram of this order, so answers of a few words or characters need a lower one."""
    perplexity_file: str | None = None
    """Held-out text for `perplexity`: a `.txt` file (one text per non-empty line) or a
    `.jsonl`/`.json`/`.parquet`/`.csv` file with a `perplexity_key` column. Each text is tokenized
    as the engine tokenizes a prompt (BOS added where the tokenizer adds one), cut to the model's
    context, and every token after the first is scored. None = the eval rows' references."""
    perplexity_key: str = "text"
    """Column of `perplexity_file` holding the text (table formats only)."""
    max_perplexity_texts: int = Field(1000, ge=1)
    """Score at most this many texts of `perplexity_file` (the first ones)."""

    @model_validator(mode="after")
    def _unique(self) -> EvalConfig:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"eval.metrics lists a metric twice: {self.metrics}")
        return self

    @property
    def needs_references(self) -> bool:
        """Whether some metric compares with (or scores) the eval rows' references."""
        return bool({"rouge_l", "bleu"} & set(self.metrics)) or (
            "perplexity" in self.metrics and self.perplexity_file is None
        )
