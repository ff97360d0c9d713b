"""Streaming is incremental end to end: the first chunk reaches the openai client while the
engine is still generating the same response.

How this is made falsifiable without timing luck: the replica runs the real vLLM engine
behind a gate (a test subclass of the endpoint, deployed like it: same routes and code) that stops its
stream after the first token until a file appears, and the test creates that file only
once the openai client has received the first chunk. A server that sends chunks as tokens
come passes at once. One that sends after the engine finishes (the old behaviour) can never
deliver the first chunk while the engine waits, so the gate times out and the test fails.
The gate also stamps time.monotonic() (one clock for all processes of the machine) when the
last token was produced: it must come after the client already had the first chunk.
"""

from __future__ import annotations

import time

import openai
import pytest

from rl_service.config import ServeConfig

GATE_TIMEOUT_S = 30.0
PROMPT = "12+34="


@pytest.fixture(scope="module")
def gated(serve_port, tiny_model_dir, tmp_path_factory):
    from ray import serve

    from rl_service.infra.env import passed_env
    from rl_service.infra.placement import serve_deployment
    from rl_service.serving.endpoint import PolicyServer

    tmp = tmp_path_factory.mktemp("stream")
    gate = tmp / "first-chunk-received"

    # Defined here (not at module level) so Ray pickles them by value into the replica.
    class GatedEngine:
        """The replica's real engine; `stream` pauses after its first delta until `gate` exists."""

        def __init__(self, engine, gate_path: str):
            self._engine, self._gate = engine, gate_path
            self.log: dict = {}

        def __getattr__(self, name):
            return getattr(self._engine, name)

        def stream(self, *args, **kwargs):
            import os

            self.log = {"opened_by_client": None, "deltas": 0}
            deltas = self._engine.stream(*args, **kwargs)
            try:
                for delta in deltas:
                    if self.log["deltas"] == 1:
                        deadline = time.monotonic() + GATE_TIMEOUT_S
                        while not os.path.exists(self._gate) and time.monotonic() < deadline:
                            time.sleep(0.005)
                        self.log["opened_by_client"] = os.path.exists(self._gate)
                    self.log["deltas"] += 1
                    self.log["last_token_at"] = time.monotonic()
                    yield delta
            finally:
                deltas.close()

    class GatedServer(PolicyServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.engine = GatedEngine(self.engine, str(gate))

        def gate_log(self) -> dict:
            return dict(self.engine.log)

    cfg = ServeConfig(port=serve_port, engine="vllm", feedback_db=str(tmp / "feedback.sqlite"))
    deployment = serve_deployment(GatedServer, name="GatedPolicyServer", ray_actor_options={"num_cpus": 0})
    handle = serve.run(
        deployment.bind(cfg.model_dump(), str(tiny_model_dir), passed_env(), None), name="stream", route_prefix="/"
    )
    yield handle, f"http://127.0.0.1:{serve_port}", gate
    serve.delete("stream")


def test_first_chunk_arrives_while_the_engine_is_still_generating(gated):
    handle, url, gate = gated
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    gate.touch()  # the non-streamed reference must not wait at the gate (it does not stream anyway)
    full = client.completions.create(model="policy", prompt=PROMPT, max_tokens=12, temperature=0)
    assert full.usage.completion_tokens >= 2 and full.choices[0].text, "need >= 2 tokens, the first visible"
    gate.unlink()

    stream = client.completions.create(model="policy", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    first_at = time.monotonic()
    gate.touch()  # only now may the engine produce the second token
    rest = list(chunks)
    log = handle.gate_log.remote().result()

    assert log["opened_by_client"] is True, f"engine waited {GATE_TIMEOUT_S}s at the gate: chunks not incremental"
    assert first_at < log["last_token_at"]
    assert log["deltas"] >= 2
    text = first.choices[0].text + "".join(c.choices[0].text for c in rest)
    assert text == full.choices[0].text
    assert rest[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert {c.model for c in [first, *rest]} == {"policy@v0"}
