"""PolicyServer is a plain class: built here without Serve (HF engine, a tiny untrained model),
its routes served by `routes.build_api(server)` through a TestClient.

Checks what can fail at the route level: a wrong key gets the 401 envelope, a request past the
admission bound gets the 503 envelope with Retry-After, neither reaches the engine, and one
admitted request answers from version 0; a swap is verified by weight_sync.load_verified
(corrupt checksum refused and counted, the published one loaded).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rl_service.config import AdditionConfig, ModelConfig, ServeConfig, SFTConfig, TinyModelConfig
from rl_service.models.build import ensure_model
from rl_service.rollout.weight_sync import WeightSyncError, state_dict_bytes, state_dict_checksum
from rl_service.serving.endpoint import PolicyServer
from rl_service.serving.routes import build_api
from rl_service.types import PolicyVersion

KEY = "unit-key"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = ModelConfig(
        cache_dir=str(tmp_path_factory.mktemp("models")),
        build=TinyModelConfig(
            hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_position_embeddings=32
        ),
        sft=SFTConfig(max_steps=0),
    )
    return ensure_model(cfg, AdditionConfig(digits=1, num_eval=20), seed=0, progress=False)


@pytest.fixture
def server(model_dir, tmp_path):
    cfg = ServeConfig(
        engine="hf",
        api_key=KEY,
        max_ongoing_requests=1,
        max_queued_requests=0,
        feedback_db=str(tmp_path / "feedback.sqlite"),
    )
    s = PolicyServer(cfg.model_dump(), str(model_dir), env={})
    yield s
    s.store.close()


def test_auth_and_admission_envelopes_then_one_answer(server):
    http = TestClient(build_api(server))
    body = {"model": "policy", "prompt": "1+2=", "max_tokens": 4, "temperature": 0}

    r = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == "invalid_api_key"

    auth = {"Authorization": f"Bearer {KEY}"}
    held = server.admission.admit()  # the one request the bound (1 + 0) admits
    r = http.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "server_error" and r.json()["error"]["code"] == "overloaded"
    stats = server.stats()
    assert (stats["overloaded"], stats["generations"], stats["admitted"]) == (1, 0, 1)

    held.release()
    held.release()  # idempotent: counted out once
    r = http.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 200 and r.headers["x-policy-version"] == "0"
    assert r.json()["model"] == "policy@v0" and r.json()["usage"]["completion_tokens"] >= 1
    stats = server.stats()
    assert (stats["generations"], stats["admitted"], stats["peak_admitted"]) == (1, 0, 1)


def test_swap_is_verified_by_the_shared_load_check(server, model_dir):
    from rl_service.config import EngineConfig
    from rl_service.rollout.engine import make_engine

    sd = {k: v + 0.1 if v.ndim == 2 else v.clone() for k, v in server.engine.model.state_dict().items()}
    bad = PolicyVersion(version=1, checksum="0" * 64, num_bytes=state_dict_bytes(sd))
    with pytest.raises(WeightSyncError, match="checksum"):
        server.apply_version(1, sd, bad)
    assert server.stats()["swap_errors"] == 1 and server.version == 0

    learner = make_engine(EngineConfig(name="hf"), model_dir, seed=0)  # scores the probes as published
    learner.load_weights(sd, 1)
    probes = [[1, 2, 3, 4, 5]]
    good = PolicyVersion(
        version=1,
        checksum=state_dict_checksum(sd),
        num_bytes=state_dict_bytes(sd),
        probe_ids=tuple(tuple(p) for p in probes),
        probe_logprobs=tuple(tuple(x) for x in learner.score(probes)),
    )
    out = server.apply_version(1, sd, good)
    assert out["applied"] and out["probe_max_diff"] < 1e-5 and server.version == 1
    assert server.apply_version(1, sd, good) == {"version": 1, "applied": False}  # not newer: ignored
    assert server.stats()["swaps"] == 1


BAD_COMPLETIONS = {
    "too many prompts": ({"prompt": ["1+1="] * 17}, "prompt"),
    "too many stops": ({"prompt": "1+1=", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "a long stop": ({"prompt": "1+1=", "stop": "x" * 257}, "stop"),
    "seed above int64": ({"prompt": "1+1=", "seed": 2**64 + 1}, "seed"),
    "seed below int64": ({"prompt": "1+1=", "seed": -(2**63) - 1}, "seed"),
}


@pytest.mark.parametrize("case", BAD_COMPLETIONS, ids=list(BAD_COMPLETIONS))
def test_unbounded_inputs_are_400s_that_generate_nothing_and_free_their_slot(server, case):
    http = TestClient(build_api(server))
    extra, param = BAD_COMPLETIONS[case]
    body = {"model": "policy", "max_tokens": 2, **extra}
    r = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    stats = server.stats()
    assert (stats["generations"], stats["admitted"]) == (0, 0)  # no engine call, the one slot free
    ok = http.post(
        "/v1/completions", json={**body, **{param: BAD_OK[param]}}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert ok.status_code == 200, ok.text  # ... so the next request gets it


BAD_OK = {"prompt": ["1+1="] * 16, "stop": ["a", "b", "c", "d"], "seed": 2**63 - 1}


@pytest.mark.parametrize("rating", ["NaN", "Infinity", "-Infinity", "1e308", "1e400", "1001"])
def test_ratings_must_be_finite_and_in_range(server, rating):
    http = TestClient(build_api(server))
    auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    done = http.post("/v1/completions", json={"model": "policy", "prompt": "1+2=", "max_tokens": 2}, headers=auth)
    cid = done.json()["id"]
    raw = f'{{"completion_id": "{cid}", "rating": {rating}}}'  # as a client would put it on the wire
    r = http.post("/v1/feedback", content=raw, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", None), r.text
    assert server.store.counts()["ratings"] == 0
    r = http.post("/v1/feedback", content=f'{{"completion_id": "{cid}", "rating": -1000}}', headers=auth)
    assert r.status_code == 200 and server.store.counts()["ratings"] == 1
