"""Locally trained byte-level BPE: digits single, BOS prepended, exact round trip."""

import pytest
from transformers import AutoTokenizer

from rl_service.models.tokenizer import build_tokenizer

CORPUS = [f"{a}+{b}={a + b}" for a in range(0, 100, 3) for b in range(0, 100, 7)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS + ["hello world, 1234 apples"] * 50, vocab_size=300)


def test_bos_added_no_eos_and_digits_single(tok):
    ids = tok("37+48=").input_ids
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[1:]) == ["3", "7", "+", "4", "8", "="]
    # Even a merge-rich corpus never merges digits: a long number is one token per digit.
    assert len(tok("9876543210", add_special_tokens=False).input_ids) == 10
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert len(tok) <= 300


@pytest.mark.parametrize("text", ["37+48=", "37+48=85", "hello world, 1234 apples", "  a  b\n", "é→∑"])
def test_decode_gives_back_the_text(tok, text):
    ids = tok(text).input_ids + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_save_and_reload_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["37+48=", "1+2=3", "hello world"]:
        assert loaded(text).input_ids == tok(text).input_ids
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    batch = loaded(["1+2=", "37+48="], padding=True, padding_side="left")
    assert batch.input_ids[0][:2] == [loaded.pad_token_id] * 2 and batch.attention_mask[0][:2] == [0, 0]


def test_no_chat_template_unless_asked(tok):
    assert tok.chat_template is None


def test_default_chat_template_ids(tmp_path):
    from rl_service.models.tokenizer import DEFAULT_CHAT_TEMPLATE

    tok = build_tokenizer(CORPUS + ["system user assistant"] * 5, vocab_size=300, chat_template=DEFAULT_CHAT_TEMPLATE)
    chat = [{"role": "system", "content": "add"}, {"role": "user", "content": "12+34="}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == "<s>system:\nadd\nuser:\n12+34=\nassistant:\n"
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == tok(text, add_special_tokens=False).input_ids and ids.count(tok.bos_token_id) == 1
    # An assistant turn ends with EOS, and the generation prompt's ids are a prefix of the full chat's.
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": "46"}], tokenize=True, return_dict=False)
    assert full[: len(ids)] == ids and tok.decode(full[len(ids) :]) == "46</s>\n"
    assert full[-2] == tok.eos_token_id
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == DEFAULT_CHAT_TEMPLATE
