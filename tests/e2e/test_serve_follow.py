"""Serving follows training: ServeFollower swaps published weights into the live replica.

A real vLLM engine in the replica, the tiny model, perturbed weights published the way the
controller does (state dict ref from the object store + PolicyVersion with checksum and
probes). Checks: a request after the swap answers from the new version (greedy text equal
to an HFEngine holding the same perturbed weights), a stream opened before the swap
completes on the old version, the replica was not restarted, a corrupt version is refused,
and update_every skips versions.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file

from rl_service.config import EngineConfig, ServeConfig
from rl_service.rollout.engine import make_engine
from rl_service.rollout.weight_sync import state_dict_bytes, state_dict_checksum
from rl_service.serving.follow import ServeFollower, VersionBoard
from rl_service.types import PolicyVersion

PROMPT = "12+34="
LONG = 48
"""Tokens of the stream a swap is asked for during."""
LONG_SEEDS = [0, 3, 4, 5, 1]
"""perturbed(seed, scale=2.0) weights whose greedy answer to PROMPT runs to LONG tokens (HF engine)."""


@pytest.fixture(scope="module")
def follower(serve_port, tiny_model_dir):
    f = ServeFollower.start(ServeConfig(port=serve_port, engine="vllm"), str(tiny_model_dir), app_name="follow")
    yield f
    f.stop()


def perturbed(tiny_model_dir, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    sd = load_file(str(tiny_model_dir / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v.clone()
        for k, v in sd.items()
    }


def publish_meta(version: int, sd, engine) -> PolicyVersion:
    probes = [engine.tokenizer(t)["input_ids"] for t in ("12+34=46", "7+8=15")]
    engine.load_weights(sd, version)
    return PolicyVersion(
        version=version,
        checksum=state_dict_checksum(sd),
        num_bytes=state_dict_bytes(sd),
        probe_ids=tuple(tuple(p) for p in probes),
        probe_logprobs=tuple(tuple(x) for x in engine.score(probes)),
    )


def test_hot_swap_in_place_keeps_streams(follower, serve_port, tiny_model_dir):
    import ray

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="none", max_retries=0)
    hf = make_engine(EngineConfig(name="hf"), tiny_model_dir, seed=0)
    old_text = hf.generate([PROMPT], 1, 16, temperature=0)[0][0].text
    new_sd = perturbed(tiny_model_dir)
    meta = publish_meta(1, new_sd, hf)
    new_text = hf.generate([PROMPT], 1, 16, temperature=0)[0][0].text
    assert new_text != old_text  # the perturbation must be visible, or the test proves nothing

    before = client.completions.create(model="policy", prompt=PROMPT, max_tokens=16, temperature=0)
    assert (before.model, before.choices[0].text) == ("policy@v0", old_text)
    stats_before = follower.handle.stats.remote().result()

    # A stream opened (and partly read) before the swap ...
    stream = client.completions.create(
        model="policy", prompt=[PROMPT, "7+8="], n=4, max_tokens=16, temperature=1.0, seed=1, stream=True
    )
    first = next(iter(stream))
    assert follower.on_version(1, ray.put(new_sd), meta) is True
    t0 = time.perf_counter()
    follower.wait(1, timeout_s=60)
    swap_s = time.perf_counter() - t0
    # ... completes after it, every chunk from the version it started on.
    rest = list(stream)
    assert {c.model for c in [first, *rest]} == {"policy@v0"}
    assert sum(1 for c in [first, *rest] if c.choices[0].finish_reason) == 8

    after = client.completions.with_raw_response.create(model="policy", prompt=PROMPT, max_tokens=16, temperature=0)
    assert after.headers["x-policy-version"] == "1"
    assert (after.parse().model, after.parse().choices[0].text) == ("policy@v1", new_text)
    stats = follower.handle.stats.remote().result()
    assert stats["swaps"] == 1 and stats["version"] == 1
    assert stats["pid"] == stats_before["pid"]  # same replica process: swapped in place, not restarted
    assert stats["generations"] > stats_before["generations"]
    print(f"\nswap visible after {swap_s:.2f}s")

    # Token for token: a greedy stream on version v with a swap to v + 1 asked for while it
    # generates. The swap waits for the stream (chosen design: the stream holds the engine slot):
    # every stream equals version v's greedy answer from the same engine, and at least one swap
    # arrived while its stream was running (the replica counts the generations it found running).
    # Heavily perturbed weights (LONG_SEEDS: greedy answers that do not stop early) make streams
    # long enough to be caught; whether a swap lands inside one is timing, so up to 4 tries.
    def swap_to(version: int, seed: int):
        sd = perturbed(tiny_model_dir, seed=seed, scale=2.0)
        return follower.handle.swap.remote(version, [ray.put(sd)], publish_meta(version, sd, hf))  # no polling

    version = 2
    assert swap_to(version, LONG_SEEDS[0]).result()["applied"]
    overlapped = 0
    for seed in LONG_SEEDS[1:]:
        ref = client.completions.create(model="policy", prompt=PROMPT, max_tokens=LONG, temperature=0)
        assert ref.model == f"policy@v{version}"
        stream = client.completions.create(model="policy", prompt=PROMPT, max_tokens=LONG, temperature=0, stream=True)
        chunks = [next(iter(stream))]
        swap = swap_to(version + 1, seed)
        chunks += list(stream)
        result = swap.result()
        assert result["applied"], result
        assert {c.model for c in chunks} == {f"policy@v{version}"}
        assert "".join(c.choices[0].text for c in chunks) == ref.choices[0].text, "a token after the swap changed"
        version += 1
        overlapped += result["generations_waited_for"] >= 1 and ref.usage.completion_tokens > 1
        if overlapped:
            break
    assert overlapped, "no swap arrived while its stream was generating: the check above proved nothing"
    after = client.completions.create(model="policy", prompt=PROMPT, max_tokens=4, temperature=0)
    assert after.model == f"policy@v{version}"


def test_a_client_leaving_mid_stream_frees_its_slot(follower, serve_port, tiny_model_dir):
    """The client reads one chunk of a long greedy stream (16 prompts x 8 choices, to the end of
    the context) and closes the connection: the replica stops the generation (it produced fewer
    tokens than the whole answer; counted in `streams_cancelled`), releases its admission slot
    and the engine, and answers the next request at once."""
    import ray

    hf = make_engine(EngineConfig(name="hf"), tiny_model_dir, seed=0)
    version = follower.handle.stats.remote().result()["version"] + 1
    sd = perturbed(tiny_model_dir, seed=LONG_SEEDS[0], scale=2.0)  # answers that do not stop early
    assert follower.handle.swap.remote(version, [ray.put(sd)], publish_meta(version, sd, hf)).result()["applied"]
    body = {"model": "policy", "prompt": [PROMPT] * 16, "n": 8, "max_tokens": 56, "temperature": 0}
    url = f"http://127.0.0.1:{serve_port}/v1/completions"
    full = httpx.post(url, json=body, timeout=60).json()
    assert full["usage"]["completion_tokens"] >= 16 * 8 * LONG, "the answers stop early: nothing to cut short"
    before = follower.handle.stats.remote().result()
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert '"text"' in first
    # the connection is closed here, the stream unread
    deadline = time.monotonic() + 15
    while True:
        stats = follower.handle.stats.remote().result()
        if stats["streams_cancelled"] > before["streams_cancelled"] and stats["admitted"] == stats["active"] == 0:
            break
        assert time.monotonic() < deadline, ("the stream was not stopped and its slot not freed", before, stats)
        time.sleep(0.05)
    assert stats["generations"] == before["generations"] + 1
    produced = stats["stream_tokens"] - before["stream_tokens"]
    assert produced < full["usage"]["completion_tokens"], f"the engine ran the whole stream ({produced} tokens)"
    after = httpx.post(url, json={**body, "prompt": PROMPT, "n": 1, "max_tokens": 4}, timeout=30)
    assert after.status_code == 200 and after.json()["model"] == f"policy@v{version}"


def test_a_redeploy_lets_streams_in_flight_finish(follower, serve_port, tiny_model_dir):
    """`serve.run` of the app again with a changed config (what redeploying `rl-service serve`
    does) while two clients stream back to back: Serve starts a new replica and drains the old
    one. No stream fails or is cut: each one ends with [DONE] and equals, token for token, the
    greedy answer of the version that served it; streams ran on both replicas."""
    import threading

    import ray
    from ray import serve

    from rl_service.infra.placement import serve_app

    hf = make_engine(EngineConfig(name="hf"), tiny_model_dir, seed=0)
    old = follower.handle.stats.remote().result()
    version = old["version"] + 1
    sd = perturbed(tiny_model_dir, seed=LONG_SEEDS[0], scale=2.0)
    assert follower.handle.swap.remote(version, [ray.put(sd)], publish_meta(version, sd, hf)).result()["applied"]
    url = f"http://127.0.0.1:{serve_port}/v1/completions"
    body = {"model": "policy", "prompt": [PROMPT] * 4, "n": 4, "max_tokens": 56, "temperature": 0}

    def greedy() -> tuple[str, str]:
        r = httpx.post(url, json={**body, "prompt": PROMPT, "n": 1}, timeout=60).json()
        return r["model"], r["choices"][0]["text"]

    refs = dict([greedy()])
    assert list(refs) == [f"policy@v{version}"]
    done, stop = [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            t0, texts, model, ended = time.monotonic(), {}, None, False
            try:
                with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as r:
                    assert r.status_code == 200, r.read()
                    for line in r.iter_lines():
                        if line == "data: [DONE]":
                            ended = True
                        elif line.startswith("data: "):
                            chunk = json.loads(line[6:])
                            assert "error" not in chunk, chunk
                            model = chunk["model"]
                            for c in chunk["choices"]:
                                texts[c["index"]] = texts.get(c["index"], "") + (c["text"] or "")
                done.append((t0, time.monotonic(), model, texts, ended, None))
            except Exception as err:  # noqa: BLE001 - recorded, asserted below
                done.append((t0, time.monotonic(), model, texts, ended, repr(err)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    cfg = ServeConfig(port=serve_port, engine="vllm", default_max_tokens=17)  # a changed config: new replicas
    t_redeploy = time.monotonic()
    serve.run(serve_app(cfg, str(tiny_model_dir), follower.board), name="follow", route_prefix="/")
    deadline = time.monotonic() + 120
    while follower.handle.stats.remote().result()["pid"] == old["pid"]:
        assert time.monotonic() < deadline, "the redeploy never replaced the replica"
        time.sleep(0.2)
    time.sleep(2.0)  # streams on the new replica too
    stop.set()
    for t in threads:
        t.join(120)
    new_model, new_text = greedy()
    refs[new_model] = new_text
    failed = [d for d in done if d[5] is not None or not d[4]]
    assert not failed, f"streams failed or were cut during the redeploy: {failed[:3]}"
    for _t0, _t1, model, texts, _ended, _err in done:
        assert model in refs, (model, refs)
        assert sorted(texts) == list(range(16)) and set(texts.values()) == {refs[model]}, (model, texts)
    old_streams = [d for d in done if d[2] == f"policy@v{version}"]
    new_streams = [d for d in done if d[2] == new_model and d[0] > t_redeploy]
    assert old_streams and new_streams and new_model != f"policy@v{version}", (len(old_streams), new_model)
    overlap = max(d[1] for d in old_streams) - min(d[0] for d in new_streams)
    print(
        f"\nredeploy: {len(old_streams)} streams on the old replica, {len(new_streams)} on the new, none failed; "
        f"the last old one ended {overlap:+.2f}s after the first new one began"
    )


def test_corrupt_version_is_refused(follower, serve_port, tiny_model_dir):
    import ray

    sd = perturbed(tiny_model_dir)
    before = httpx.get(f"http://127.0.0.1:{serve_port}/health").json()["policy_version"]
    bad_meta = PolicyVersion(version=99, checksum="0" * 64, num_bytes=state_dict_bytes(sd))
    follower.on_version(99, ray.put(sd), bad_meta)
    deadline = time.monotonic() + 30
    while follower.handle.stats.remote().result()["swap_errors"] == 0:
        assert time.monotonic() < deadline, "replica never tried version 99"
        time.sleep(0.2)
    r = httpx.get(f"http://127.0.0.1:{serve_port}/health").json()
    assert r["policy_version"] == before


def test_update_every_skips_versions(serve_port):
    import ray

    board = ray.remote(num_cpus=0)(VersionBoard).remote()
    try:
        f = ServeFollower(ServeConfig(update_every=3), "unused", board, handle=None)
        published = [v for v in range(1, 8) if f.on_version(v, ray.put({}), None)]
        assert published == [3, 6]
        assert ray.get(board.latest.remote(0))[:2] == (2, 6)  # two publishes (serial 2), the newest version 6
    finally:
        ray.kill(board)
