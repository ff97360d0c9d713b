"""The Ray Serve application: OpenAI routes in front of one engine per replica.

    client ──HTTP──▶ Serve proxy (127.0.0.1:port; outer bound: OVERLOAD_HEADROOM more than the
                        │                  app's limits, past that Serve's own plain-text 503)
                        ▼
                 PolicyServer replica (FastAPI ingress)
                   auth ─▶ admission (503 envelope past max_ongoing + max_queued) ─▶ bounded body
                   ─▶ schema ─▶ limits ─▶ engine.generate | engine.stream (stream.py) ─▶ feedback store
                   ▲                     (engine lock: one generation or one swap at a time)
                   └── swap(version, weights) ◀── poll thread ◀── VersionBoard (follow.py) ◀── training

Every check runs before the engine is touched, so a rejected request starts no generation
(`stats()["generations"]` counts engine calls). Each response reports the policy version
that produced it twice: the `model` field is `<model_name>@v<version>` and the
`x-policy-version` header carries the number. Streaming (SSE) is incremental: each token
is sent as the engine produces it, while the stream holds the engine lock, so a swap waits
for the stream's generation to end and never changes a response half way.

Overload: the replica itself admits at most `max_ongoing_requests + max_queued_requests`
requests (generating + waiting for the engine) and answers the next with a 503 in the OpenAI
envelope. Serve lets OVERLOAD_HEADROOM more requests through (and queues as many more while
routing a burst) so they can be told so; Serve's bounds stay the outer bound.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rl_service.config import ServeConfig
from rl_service.serving import protocol as P
from rl_service.serving.feedback import FeedbackStore, StoreUnavailable
from rl_service.serving.stream import DeltaFeed, sse_events

log = logging.getLogger(__name__)

OVERLOAD_HEADROOM = 64
"""Requests Serve admits beyond the replica's own limit (per replica, and in its routing queue,
which a burst fills while it assigns requests to replicas), so overload is answered by the app
(OpenAI envelope, microseconds each) and Serve's plain-text 503 only past that outer bound."""
api = FastAPI(title="rl-service policy", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(P.APIError)
async def _api_error(_request: Request, err: P.APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(StoreUnavailable)
async def _store_down(request: Request, err: StoreUnavailable) -> JSONResponse:
    return await _api_error(request, P.store_unavailable(str(err)))  # the store reconnects on the next call


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return JSONResponse(P.envelope(str(err.detail), kind), status_code=err.status_code)


@api.exception_handler(RequestValidationError)
async def _schema_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(P.envelope(str(err.errors()[:1]), "invalid_request_error", code="invalid_type"), 422)


def _make_engine(cfg: ServeConfig, model_path: str):
    from rl_service.rollout.engine import make_engine

    if cfg.engine.name == "hf":
        import torch

        torch.set_num_threads(cfg.threads)
    return make_engine(cfg.engine, model_path, seed=0, threads=cfg.threads, gpu=cfg.num_gpus > 0)


@serve.deployment(name="PolicyServer")
@serve.ingress(api)
class PolicyServer:
    def __init__(self, cfg: dict, model_path: str, env: dict[str, str], board=None):
        os.environ.update(env)  # TMPDIR, caches: set before the engine imports vllm
        self.cfg = ServeConfig.model_validate(cfg)
        self.engine = _make_engine(self.cfg, model_path)
        self.tokenizer = self.engine.tokenizer
        self.context = json.loads((Path(model_path) / "config.json").read_text())["max_position_embeddings"]
        self.store = FeedbackStore(self.cfg.feedback_db, self.cfg.feedback_dsn)
        self.api_key = self.cfg.api_key
        self._engine_lock = threading.Lock()
        # Admission: requests generating or waiting for the engine. Each waits in its own pool
        # thread, so waiting requests never starve the default executor (feedback writes, swaps).
        self._limit = self.cfg.max_ongoing_requests + self.cfg.max_queued_requests
        self._admit_lock = threading.Lock()
        self._engine_pool = ThreadPoolExecutor(self._limit, thread_name_prefix="engine")
        self._stats = {
            "generations": 0,
            "active": 0,
            "peak_active": 0,
            "admitted": 0,
            "peak_admitted": 0,
            "overloaded": 0,
            "swaps": 0,
            "swap_errors": 0,
        }
        self._board, self._stop = board, threading.Event()
        if board is not None:
            from rl_service.serving.follow import follow_board

            follow_board(self, board, self._stop)  # loads the newest version now, then polls

    # ------------------------------------------------------------- handle methods

    @property
    def version(self) -> int:
        return self.engine.version

    def stats(self) -> dict:
        return {**self._stats, "version": self.version, "pid": os.getpid()}

    async def swap(self, version: int, state_dict, meta=None) -> dict:
        """Handle method: load `version` in place, no restart. `state_dict` is a dict of
        tensors or `[ObjectRef]` to one. Runs off the event loop so streams keep flowing."""
        return await asyncio.to_thread(self.apply_version, version, state_dict, meta)

    def apply_version(self, version: int, state_dict, meta=None) -> dict:
        """Waits for the running generation to finish; requests after it see the new weights.
        Versions not newer than the loaded one are ignored (swaps may arrive out of order)."""
        import ray

        from rl_service.rollout.weight_sync import max_probe_diff, state_dict_checksum

        start = time.perf_counter()
        if version <= self.version:
            return {"version": self.version, "applied": False}
        if isinstance(state_dict, list):
            state_dict = ray.get(state_dict[0])
        if isinstance(meta, ray.ObjectRef):
            meta = ray.get(meta)
        if meta is not None and state_dict_checksum(state_dict) != meta.checksum:
            self._stats["swap_errors"] += 1
            raise ValueError(f"version {version}: checksum differs from the published one; not loaded")
        with self._engine_lock:
            if version <= self.version:
                return {"version": self.version, "applied": False}
            self.engine.load_weights(state_dict, version)
            diff = (
                max_probe_diff(meta.probe_logprobs, self.engine.score([list(p) for p in meta.probe_ids]))
                if meta is not None and meta.probe_ids
                else 0.0
            )
        self._stats["swaps"] += 1
        return {"version": version, "applied": True, "probe_max_diff": diff, "seconds": time.perf_counter() - start}

    def __del__(self):
        self._stop.set()
        self._engine_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------- routes

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "policy_version": self.version}

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._auth(request)
        card = {
            "id": self.cfg.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "rl-service",
            "policy_version": self.version,
            "max_model_len": self.context,
        }
        return JSONResponse({"object": "list", "data": [card]}, headers=self._headers(self.version))

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._complete(request, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._complete(request, chat=True)

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        self._auth(request)
        fb = P.parse_feedback(await self._body(request))
        fid = P.new_id("fb")
        if isinstance(fb, P.RatingFeedback):
            if not await asyncio.to_thread(self.store.has_completion, fb.completion_id, fb.choice_index):
                raise P.APIError(
                    404,
                    f"no completion {fb.completion_id!r} choice {fb.choice_index}",
                    "not_found_error",
                    param="completion_id",
                )
            await asyncio.to_thread(
                self.store.add_rating, fid, fb.completion_id, fb.choice_index, fb.rating, fb.comment
            )
        else:
            await asyncio.to_thread(self.store.add_preference, fid, fb.prompt, fb.chosen, fb.rejected, fb.comment)
        # Returned only after the commit: an acknowledged row survives a crash.
        return JSONResponse({"id": fid, "object": "feedback", "stored": True})

    # ------------------------------------------------------------- request path

    def _auth(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise P.APIError(
                401,
                "missing or invalid API key (send Authorization: Bearer <key>)",
                "authentication_error",
                code="invalid_api_key",
            )

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 past max_body_bytes without reading the rest."""
        cap = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise P.APIError(413, f"request body above {cap} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise P.APIError(413, f"request body above {cap} bytes", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_model(self, name: str) -> None:
        # Accept the bare name and any `name@vN` echoed back from a response: the newest
        # loaded version answers either way.
        base = self.cfg.model_name
        if name != base and not (name.startswith(base + "@v") and name[len(base) + 2 :].isdigit()):
            raise P.APIError(
                404,
                f"model {name!r} does not exist (served: {base!r})",
                "not_found_error",
                param="model",
                code="model_not_found",
            )

    def _fit_context(self, prompts: list[str], asked: int | None) -> tuple[int, int]:
        """-> (max_tokens, prompt tokens); 400 when the prompt plus max_tokens exceeds the context."""
        lengths = [len(self.tokenizer(p)["input_ids"]) for p in prompts]
        longest = max(lengths)
        room = self.context - longest
        if room < 1:
            raise P.APIError(
                400,
                f"prompt is {longest} tokens; the model's context is {self.context}",
                param="prompt",
                code="context_length_exceeded",
            )
        if asked is None:
            return min(self.cfg.default_max_tokens, room), sum(lengths)
        if asked > room:
            raise P.APIError(
                400,
                f"prompt ({longest} tokens) + max_tokens ({asked}) exceeds the model's "
                f"context of {self.context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked, sum(lengths)

    def _admit(self):
        """Count this request in, or refuse it with the 503 envelope (before reading its body).
        -> its release function (idempotent: whoever finishes the request last may call it)."""
        with self._admit_lock:
            if self._stats["admitted"] >= self._limit:
                self._stats["overloaded"] += 1
                raise P.overloaded(self._limit)
            self._stats["admitted"] += 1
            self._stats["peak_admitted"] = max(self._stats["peak_admitted"], self._stats["admitted"])
        released = threading.Event()

        def release() -> None:
            with self._admit_lock:
                if not released.is_set():
                    released.set()
                    self._stats["admitted"] -= 1

        return release

    def _engine_call(self, fn):
        """Run `fn()` holding the engine lock (one generation or swap at a time; swaps wait here)."""
        with self._engine_lock:
            self._stats["generations"] += 1
            self._stats["active"] += 1
            self._stats["peak_active"] = max(self._stats["peak_active"], self._stats["active"])
            try:
                return fn()
            finally:
                self._stats["active"] -= 1

    async def _complete(self, request: Request, chat: bool):
        self._auth(request)
        release = self._admit()
        handed_over: list[bool] = []  # a started stream's engine thread releases it instead
        try:
            return await self._answer(request, chat, release, handed_over)
        finally:
            if not handed_over:
                release()

    async def _answer(self, request: Request, chat: bool, release, handed_over: list[bool]):
        req = P.parse(P.ChatRequest if chat else P.CompletionRequest, await self._body(request))
        self._check_model(req.model)
        P.check_sampling(req, self.cfg.max_tokens, self.cfg.max_n)
        if chat:
            prompts = [P.render_chat(req.messages, self.tokenizer)]
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if not prompts:
                raise P.APIError(400, "prompt must not be empty", param="prompt")
        max_tokens, prompt_tokens = self._fit_context(prompts, P.requested_max_tokens(req))
        sampling = dict(
            n=req.n,
            max_new_tokens=max_tokens,
            temperature=float(req.temperature),
            top_p=float(req.top_p),
            seed=req.seed,
        )
        kind, rid = ("chat", P.new_id("chatcmpl")) if chat else ("completion", P.new_id("cmpl"))
        per_choice = [p for p in prompts for _ in range(req.n)]
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return await self._stream(
                chat,
                rid,
                kind,
                prompts,
                per_choice,
                sampling,
                req.stop,
                release,
                handed_over,
                prompt_tokens if include_usage else None,
            )

        def generate():
            return self.engine.generate(prompts, **sampling), self.engine.version

        groups, version = await asyncio.get_running_loop().run_in_executor(
            self._engine_pool, self._engine_call, generate
        )
        comps = [c for g in groups for c in g]
        choices = [P.apply_stop(c.text, req.stop, c.finish_reason) for c in comps]
        model = P.served_model(self.cfg.model_name, version)
        await asyncio.to_thread(self.store.record_completion, rid, kind, model, version, per_choice, choices)
        usage = P.usage(prompt_tokens, sum(len(c.token_ids) for c in comps))
        body = (P.chat_body if chat else P.completion_body)(rid, model, choices, usage)
        return JSONResponse(body, headers=self._headers(version, rid))

    async def _stream(
        self,
        chat: bool,
        rid: str,
        kind: str,
        prompts: list[str],
        per_choice: list[str],
        sampling: dict,
        stop,
        release,
        handed_over: list[bool],
        prompt_tokens: int | None,
    ) -> StreamingResponse:
        """Start the engine stream; answer once it holds the engine (its version goes in the headers).
        prompt_tokens: send a usage chunk at the end (stream_options.include_usage), else None."""

        def produce(put, cancel: threading.Event) -> None:
            try:

                def run():
                    put(("version", self.engine.version))
                    deltas = self.engine.stream(prompts, **sampling)
                    try:
                        for delta in deltas:
                            put(("delta", delta))
                            if cancel.is_set():
                                break
                    finally:
                        deltas.close()  # aborts what the engine still runs

                self._engine_call(run)
            finally:
                release()  # admission ends with the generation, sent or not

        feed = DeltaFeed(self._engine_pool, produce)
        handed_over.append(True)
        try:
            what, item = await feed.get()
        except BaseException:
            feed.cancel.set()  # the client left while waiting for the engine
            raise
        if what == "error":
            raise P.APIError(500, f"generation failed: {type(item).__name__}: {item}", "server_error")
        version = item
        model = P.served_model(self.cfg.model_name, version)

        async def record(choices: list[tuple[str, str]]) -> None:
            await asyncio.to_thread(self.store.record_completion, rid, kind, model, version, per_choice, choices)

        events = sse_events(
            feed,
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            chat,
            rid,
            model,
            len(per_choice),
            stop,
            record,
            prompt_tokens,
        )
        return StreamingResponse(events, media_type="text/event-stream", headers=self._headers(version, rid))

    def _headers(self, version: int, rid: str | None = None) -> dict[str, str]:
        h = {"x-policy-version": str(version)}
        if rid:
            h["x-request-id"] = rid
        return h


def replica_env() -> dict[str, str]:
    """Process env a replica needs from the driver (caches and sockets inside the project)."""
    keys = (
        "TMPDIR",
        "VLLM_CACHE_ROOT",
        "TORCHINDUCTOR_CACHE_DIR",
        "HF_HUB_OFFLINE",
        "OMP_WAIT_POLICY",
        "TOKENIZERS_PARALLELISM",
        "VLLM_LOGGING_LEVEL",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def build_app(cfg: ServeConfig, model_path: str, board=None):
    """The bound Serve application for `serve.run`. Paths are made absolute here because a
    replica's working directory is not the driver's."""
    cfg = cfg.model_copy(
        update={
            "api_key": cfg.api_key or os.environ.get("RL_SERVICE_API_KEY") or None,
            "feedback_db": str(Path(cfg.feedback_db).resolve()),
        }
    )
    scaling = (
        {
            "autoscaling_config": {
                "min_replicas": cfg.min_replicas,
                "max_replicas": cfg.max_replicas,
                "target_ongoing_requests": cfg.target_ongoing_requests,
            }
        }
        if cfg.min_replicas is not None
        else {"num_replicas": cfg.num_replicas}
    )
    # The replica answers overload itself (`PolicyServer._admit`); Serve's bounds sit above it.
    deployment = PolicyServer.options(
        max_ongoing_requests=cfg.max_ongoing_requests + cfg.max_queued_requests + OVERLOAD_HEADROOM,
        max_queued_requests=cfg.max_queued_requests + OVERLOAD_HEADROOM,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        **scaling,
    )
    return deployment.bind(cfg.model_dump(), str(Path(model_path).resolve()), replica_env(), board)
