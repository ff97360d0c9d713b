"""A chat completion's prompt is the model's own template ids (protocol.chat_prompt_ids), never
its rendered text tokenised again; served end to end by PolicyServer (HF engine, no Serve)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from rl_service.config import ServeConfig, TinyModelConfig
from rl_service.models.tiny import save_random_model
from rl_service.models.tokenizer import DEFAULT_CHAT_TEMPLATE, build_tokenizer
from rl_service.serving.endpoint import PolicyServer
from rl_service.serving.protocol import ChatMessage, chat_prompt_ids, render_chat
from rl_service.serving.routes import build_api

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)] + ["user assistant system"]
CHAT = [{"role": "system", "content": "add"}, {"role": "user", "content": "12+3="}]
# No BOS in the template: the tokenizer's own post-processor would add one to re-tokenised text.
BOSLESS = "{% for m in messages %}{{ m['role'] + '> ' + m['content'] + '\\n' }}{% endfor %}{{ 'assistant> ' }}"


def template_ids(tok, messages=CHAT) -> list[int]:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, BOSLESS])
def test_prompt_ids_are_the_templates(template):
    tok = build_tokenizer(CORPUS, 300, chat_template=template)
    ids = chat_prompt_ids([ChatMessage(**m) for m in CHAT], tok)
    assert ids == template_ids(tok)
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert ids.count(tok.bos_token_id) == (template == DEFAULT_CHAT_TEMPLATE)
    assert tok(text)["input_ids"] != ids  # re-tokenising the text: doubled BOS, or one added


def test_without_a_template_the_simple_chat_text_is_tokenised():
    tok = build_tokenizer(CORPUS, 300)
    messages = [ChatMessage(**m) for m in CHAT]
    assert chat_prompt_ids(messages, tok) == tok(render_chat(messages, tok))["input_ids"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    shape = TinyModelConfig(
        architecture="gpt2", hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_position_embeddings=64
    )
    path = save_random_model(tmp / "model", shape, CORPUS, vocab_size=300, chat_template=BOSLESS)
    s = PolicyServer(ServeConfig(engine="hf", feedback_db=str(tmp / "fb.sqlite")).model_dump(), str(path), env={})
    yield s
    s.store.close()


def test_chat_completion_uses_the_template_ids(server):
    http = TestClient(build_api(server))
    ids = template_ids(server.tokenizer)
    (expected,) = server.engine.generate_ids([ids], n=1, max_new_tokens=5, temperature=0)[0]
    body = {"model": "policy", "messages": CHAT, "max_tokens": 5, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    assert r.json()["choices"][0]["message"]["content"] == expected.text
    streamed = http.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == expected.text
    assert events[-1]["usage"]["prompt_tokens"] == len(ids)
