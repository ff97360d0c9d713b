"""Byte-level BPE tokenizer trained locally (no hub) with every digit its own token.

Merged digit strings make arithmetic much harder to learn, so the pre-tokenizer splits
digits individually before the byte-level step. BOS is prepended by the post-processor
(so vLLM and HF see identical prompt ids); EOS is never added: the model must emit it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] + ':' + '\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' + '\\n' }}{% endif %}"
)
"""A plain-text chat template (no extra special tokens): BOS, then per message `role:` and its
content on the next line; an assistant turn ends with EOS (the model learns to stop there).
The generation prompt `assistant:\n` is exactly how a rendered assistant turn begins, and a
newline never merges with the text after it, so prompt ids + completion ids = the ids of the
whole rendered chat."""


def build_tokenizer(
    corpus: Iterable[str], vocab_size: int, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`. The vocabulary is at most `vocab_size`
    (the 256 byte symbols + specials always exist, so short corpora give fewer merges).
    `chat_template`: a Jinja chat template set on the tokenizer (saved with it), e.g.
    DEFAULT_CHAT_TEMPLATE; None = no template."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    # add_prefix_space=False: "37+48=" must not become " 37+48=" (decode gives text back exactly).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=10**6,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
