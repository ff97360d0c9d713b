"""The OpenAI-compatible endpoint through the official `openai` client: one Serve app with a
real vLLM engine on the tiny model, shared by the module.

Greedy answers are checked against an HFEngine run in this process on the same prompt
(a different implementation: vLLM and HF agree in fp32, tests/integration/test_engine.py).
Rejections are checked for status, the OpenAI error envelope, a bounded body, and that the
replica's engine was never called (`stats()["generations"]` unchanged).
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from rl_service.config import ServeConfig
from rl_service.serving.protocol import ChatMessage, render_chat

KEY = "test-key"
CAP = 24  # serve.max_tokens


@pytest.fixture(scope="module")
def feedback_db(tmp_path_factory):
    return tmp_path_factory.mktemp("api") / "feedback.sqlite"


@pytest.fixture(scope="module")
def app(serve_port, tiny_model_dir, feedback_db):
    from ray import serve

    from rl_service.infra.placement import serve_app

    db = feedback_db
    cfg = ServeConfig(
        port=serve_port,
        engine="vllm",
        api_key=KEY,
        max_tokens=CAP,
        default_max_tokens=8,
        max_body_bytes=16384,
        max_ongoing_requests=1,
        max_queued_requests=2,
        feedback_db=str(db),
    )
    handle = serve.run(serve_app(cfg, str(tiny_model_dir)), name="api", route_prefix="/")
    yield handle, f"http://127.0.0.1:{serve_port}"
    serve.delete("api")


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app[1]}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from rl_service.config import EngineConfig
    from rl_service.rollout.engine import make_engine

    return make_engine(EngineConfig(name="hf"), tiny_model_dir, seed=0)


def generations(app) -> int:
    return app[0].stats.remote().result()["generations"]


def test_models_list_and_auth(app, client):
    assert [m.id for m in client.models.list().data] == ["policy"]
    for bad in (openai.OpenAI(base_url=f"{app[1]}/v1", api_key="wrong", max_retries=0),):
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    before = generations(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{app[1]}/v1/completions", json={"model": "policy", "prompt": "1+1="}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    assert generations(app) == before


def test_completion_greedy_matches_engine_and_reports_version(client, hf):
    raw = client.completions.with_raw_response.create(model="policy", prompt="12+34=", max_tokens=8, temperature=0)
    resp = raw.parse()
    assert raw.headers["x-policy-version"] == "0" and resp.model == "policy@v0"
    assert resp.choices[0].text == hf.generate(["12+34="], 1, 8, temperature=0)[0][0].text
    assert resp.usage.prompt_tokens == len(hf.tokenizer("12+34=")["input_ids"])
    assert resp.id.startswith("cmpl-")


def test_completion_stream_equals_non_stream(client):
    full = client.completions.create(model="policy", prompt="7+8=", max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="policy", prompt="7+8=", max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert {c.model for c in chunks} == {"policy@v0"} and len({c.id for c in chunks}) == 1


def test_stream_with_stop_and_several_choices_equals_non_stream(client):
    """Stop strings cut the stream exactly where they cut the full answer (a possible stop
    prefix is held back, never sent); choices interleave by index and each ends once."""
    kwargs = dict(model="policy", prompt=["12+34=", "7+8="], n=2, max_tokens=12, temperature=1.0, seed=11)
    full = client.completions.create(**kwargs)
    texts = [c.text for c in full.choices]
    stop = next((t[1:3] for t in texts if len(t) >= 3), None) or "1"  # a string that really occurs
    full = client.completions.create(**kwargs, stop=stop)
    chunks = list(client.completions.create(**kwargs, stop=stop, stream=True))
    got: dict[int, str] = {}
    finish: dict[int, str] = {}
    for c in chunks:
        (choice,) = c.choices
        assert choice.index not in finish, "text after the choice's finish chunk"
        got[choice.index] = got.get(choice.index, "") + choice.text
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert got == {c.index: c.text for c in full.choices}
    assert finish == {c.index: c.finish_reason for c in full.choices}
    assert "stop" in finish.values()


def test_chat_and_chat_stream(client, hf):
    messages = [{"role": "user", "content": "5+5="}]
    prompt = render_chat([ChatMessage(**m) for m in messages], hf.tokenizer)
    expected = hf.generate([prompt], 1, 6, temperature=0)[0][0].text
    resp = client.chat.completions.create(model="policy", messages=messages, max_tokens=6, temperature=0)
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content == expected
    assert resp.model == "policy@v0"
    chunks = list(
        client.chat.completions.create(model="policy", messages=messages, max_tokens=6, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_include_usage_sends_the_non_stream_usage_last(client):
    """stream_options.include_usage: one extra chunk before [DONE], no choices, the same token
    counts as the non-streamed answer; without it no chunk carries usage."""
    kwargs = dict(model="policy", prompt=["12+34=", "7+8="], n=2, max_tokens=6, temperature=0)
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(c.choices for c in chunks[:-1])
    assert chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert full.usage.completion_tokens > 0
    plain = list(client.completions.create(**kwargs, stream=True))
    assert all(c.choices and c.usage is None for c in plain)
    messages = [{"role": "user", "content": "5+5="}]
    chat_full = client.chat.completions.create(model="policy", messages=messages, max_tokens=6, temperature=0)
    chat = list(
        client.chat.completions.create(
            model="policy",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chat[-1].choices == [] and chat[-1].usage.model_dump() == chat_full.usage.model_dump()


def test_sampling_n_and_list_prompts(client):
    resp = client.completions.create(model="policy", prompt=["1+2=", "3+4="], n=3, max_tokens=5, seed=7)
    assert [c.index for c in resp.choices] == list(range(6))
    assert all(c.finish_reason in ("stop", "length") for c in resp.choices)


LONG = "1234567890" * 5  # ~51 tokens: fits the 64-token context alone, not with max_tokens 20
BAD_INPUTS = [
    ({"model": "policy", "prompt": "1+1=", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "policy", "prompt": "1+1=", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "policy", "prompt": "1+1=", "max_tokens": CAP + 1}, 400, "max_tokens"),
    ({"model": "policy", "prompt": LONG, "max_tokens": 20}, 400, "max_tokens"),
    ({"model": "policy", "prompt": LONG * 2}, 400, "prompt"),
    ({"model": "policy", "prompt": "1+1=", "n": 0}, 400, "n"),
    ({"model": "policy", "prompt": "1+1=", "temperature": 9.0}, 400, "temperature"),
    ({"model": "nope", "prompt": "1+1="}, 404, "model"),
    ({"model": "policy", "prompt": "1+1=", "max_tokens": "10"}, 422, "max_tokens"),
    ({"model": "policy", "prompt": 5}, 422, "prompt"),
    ({"model": "policy", "prompt": "1+1=", "stream": "yes"}, 422, "stream"),
    ({"model": "policy", "prompt": "1+1=", "temperature": "hot"}, 422, "temperature"),
    ({"model": "policy", "prompt": "1+1=", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    (
        {"model": "policy", "prompt": "1+1=", "stream": True, "stream_options": {"include_usage": 1}},
        422,
        "stream_options",
    ),
    ({"prompt": "1+1="}, 422, "model"),
    ([1, 2, 3], 422, None),
]


@pytest.mark.parametrize("body,status,param", BAD_INPUTS, ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD_INPUTS)])
def test_bad_completion_inputs_rejected_before_generation(app, body, status, param):
    before = generations(app)
    r = httpx.post(f"{app[1]}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert len(r.content) < 1024
    assert generations(app) == before


def test_bad_chat_and_raw_bodies(app):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = generations(app)
    cases = [
        (b'{"model": "policy", "messages": [{"role": "user", "content": "hi"}', 400),  # malformed JSON
        (json.dumps({"model": "policy", "messages": "hi"}).encode(), 422),
        (json.dumps({"model": "policy", "messages": []}).encode(), 422),
        (json.dumps({"model": "policy", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 422),
        (
            json.dumps(
                {"model": "policy", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}
            ).encode(),
            400,
        ),
        (b'{"model": "policy", "prompt": "' + b"9" * (10 * 2**20) + b'"}', 413),  # 10 MB body
    ]
    for body, status in cases:
        path = "/v1/completions" if b'"prompt"' in body[:40] else "/v1/chat/completions"
        r = httpx.post(
            f"{app[1]}{path}", content=body, headers={**auth, "content-type": "application/json"}, timeout=60
        )
        assert r.status_code == status, (body[:80], r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"} and len(r.content) < 1024
    assert generations(app) == before


def test_openai_client_surfaces_rejections(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="1+1=")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="policy", prompt="1+1=", max_tokens=CAP + 1)
    assert err.value.body["param"] == "max_tokens"


def test_overload_is_rejected_not_queued_without_bound(app):
    """max_ongoing_requests=1, max_queued_requests=2: of 16 simultaneous slow requests (half of
    them streams) the replica holds at most 3 at a time; the rest get 503 at once, in the OpenAI
    envelope (the openai client parses it), and the engine never runs 2 generations at once."""
    body = {"model": "policy", "prompt": ["1+1=", "2+2=", "3+3=", "4+4="], "n": 8, "max_tokens": CAP}
    outcomes, barrier = [], threading.Barrier(16)
    before = app[0].stats.remote().result()

    def call(stream: bool):
        c = openai.OpenAI(base_url=f"{app[1]}/v1", api_key=KEY, max_retries=0, timeout=120)
        barrier.wait()
        try:
            resp = c.completions.create(**body, stream=stream)
            if stream:
                resp = list(resp)
            outcomes.append(200)
        except openai.APIStatusError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=call, args=(i % 2 == 1,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes if o != 200]
    assert len(outcomes) == 16 and errors and outcomes.count(200) >= 1, outcomes
    for err in errors:
        assert isinstance(err, openai.InternalServerError) and err.status_code == 503, err
        assert isinstance(err.body, dict), (err.body, dict(err.response.headers))
        assert err.body["code"] == "overloaded" and err.body["type"] == "server_error", err.body
        assert err.response.headers["retry-after"] == "1"
    stats = app[0].stats.remote().result()
    assert stats["peak_admitted"] == 3 and stats["peak_active"] == 1, stats
    assert stats["overloaded"] - before["overloaded"] == len(errors)
    assert stats["admitted"] == 0  # every admission, streamed or not, was released
    ok = httpx.post(
        f"{app[1]}/v1/completions",
        json={"model": "policy", "prompt": "1+1="},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert ok.status_code == 200  # recovers once the burst is over


def test_feedback_rating_and_preference(app, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    resp = client.completions.create(model="policy", prompt="2+2=", max_tokens=4)
    r = httpx.post(f"{app[1]}/v1/feedback", json={"completion_id": resp.id, "rating": 1}, headers=auth)
    assert r.status_code == 200 and r.json()["stored"] is True
    r = httpx.post(f"{app[1]}/v1/feedback", json={"completion_id": "cmpl-unknown", "rating": 1}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    r = httpx.post(f"{app[1]}/v1/feedback", json={"prompt": "2+2=", "chosen": "4", "rejected": "5"}, headers=auth)
    assert r.status_code == 200
    r = httpx.post(f"{app[1]}/v1/feedback", json={"prompt": "2+2=", "chosen": 4, "rejected": "5"}, headers=auth)
    assert r.status_code == 422
    assert httpx.post(f"{app[1]}/v1/feedback", json={"completion_id": resp.id, "rating": 1}).status_code == 401


def test_simulated_users_post_their_hidden_preference_with_their_ids(app, feedback_db):
    """rl_service/testing/simulated_users.py against the endpoint: a user without noise posts
    the answer its hidden preference scores higher as chosen, a user whose error rate is 1
    always the other; every posted row is in the store under its annotator id."""
    from rl_service.serving.feedback import FeedbackStore
    from rl_service.testing.simulated_users import hidden_score, make_users, run_users

    users = make_users(2, noise=0.0, bias={"user-1": 1.0}, seed=3)
    posted = run_users(app[1], users, rounds=6, api_key=KEY)
    assert not [e for u in users for e in u.stats.errors]
    by_user = {u.name: [p for p in posted if p["annotator"] == u.name] for u in users}
    assert by_user["user-0"] and by_user["user-1"], {k: len(v) for k, v in by_user.items()}  # ties aside
    for name, rows in by_user.items():
        for row in rows:
            better = hidden_score(row["prompt"], row["chosen"]) > hidden_score(row["prompt"], row["rejected"])
            assert better == (name == "user-0") and row["flipped"] == (name == "user-1"), row
    store = FeedbackStore(str(feedback_db))
    try:
        stored = {(p["prompt"], p["chosen"], p["rejected"], p.get("annotator")) for p in store.preference_pairs()}
    finally:
        store.close()
    assert {(p["prompt"], p["chosen"], p["rejected"], p["annotator"]) for p in posted} <= stored
