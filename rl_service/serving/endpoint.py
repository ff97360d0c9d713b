"""PolicyServer: the endpoint body, one engine per replica, OpenAI routes in front of it.

    client ──HTTP──▶ Serve proxy (outer bound: OVERLOAD_HEADROOM above the app's limits, past
                        │          that Serve's own plain-text 503; rl_service/infra/placement.py)
                        ▼
                 PolicyServer replica (routes.py: URL -> method, errors -> OpenAI envelope)
                   auth ─▶ admission (admission.py: 503 envelope past max_ongoing + max_queued)
                   ─▶ bounded body ─▶ schema ─▶ limits (checks.py, protocol.py)
                   ─▶ engine.generate | engine.stream (stream.py) ─▶ feedback store (feedback.py)
                   ▲                     (engine slot: one generation or one swap at a time)
                   └── swap(version, weights) ◀── poll thread ◀── VersionBoard (follow.py) ◀── training

A plain class: Serve's deployment and ingress are applied at wiring time
(rl_service/infra/placement.serve_app); a test constructs it directly and serves
`routes.build_api(server)` without Serve.

Every check runs before the engine is touched, so a rejected request starts no generation
(`stats()["generations"]` counts engine calls). Each response reports the policy version
that produced it twice: the `model` field is `<model_name>@v<version>` and the
`x-policy-version` header carries the number. Streaming (SSE) is incremental: each token
is sent as the engine produces it, while the stream holds the engine slot, so a swap waits
for the stream's generation to end and never changes a response half way.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from rl_service.config import ServeConfig
from rl_service.config.serve import secret
from rl_service.models.hf_config import context_length
from rl_service.rollout.weight_sync import WeightSyncError, load_verified
from rl_service.serving import protocol as P
from rl_service.serving.admission import Admission, EngineSlot, Ticket
from rl_service.serving.checks import check_auth, check_model, fit_context, read_body
from rl_service.serving.feedback import FeedbackStore
from rl_service.serving.stream import open_stream, sse_events


def _make_engine(cfg: ServeConfig, model_path: str):
    from rl_service.rollout.engine import make_engine

    if cfg.engine.name == "hf":
        import torch

        torch.set_num_threads(cfg.threads)
    return make_engine(cfg.engine, model_path, seed=0, threads=cfg.threads, gpu=cfg.num_gpus > 0)


class PolicyServer:
    """One replica: `cfg` a ServeConfig as a dict, `env` the driver's passed env (infra.env),
    `board` a VersionBoard actor to follow training (None: serve `model_path` as version 0)."""

    def __init__(self, cfg: dict, model_path: str, env: dict[str, str], board=None):
        os.environ.update(env)  # TMPDIR, caches: set before the engine imports vllm
        self.cfg = ServeConfig.model_validate(cfg)
        self.engine = _make_engine(self.cfg, model_path)
        self.tokenizer = self.engine.tokenizer
        self.context = context_length(model_path)
        self.store = FeedbackStore(self.cfg.feedback_db, secret(self.cfg.feedback_dsn))
        self.api_key = secret(self.cfg.api_key)
        limit = self.cfg.max_ongoing_requests + self.cfg.max_queued_requests
        self.admission = Admission(limit)
        self.slot = EngineSlot(limit)
        self._swap_lock = threading.Lock()  # one swap at a time; generations go on until the load
        self._swaps = {"swaps": 0, "swap_errors": 0}
        self._board, self._stop = board, threading.Event()
        if board is not None:
            from rl_service.serving.follow import follow_board

            follow_board(self, board, self._stop)  # loads the newest version now, then polls

    # ------------------------------------------------------------- handle methods

    @property
    def version(self) -> int:
        return self.engine.version

    def stats(self) -> dict:
        return {
            **self.slot.stats(),
            **self.admission.stats(),
            **self._swaps,
            "version": self.version,
            "pid": os.getpid(),
        }

    async def swap(self, version: int, state_dict, meta=None) -> dict:
        """Handle method: load `version` in place, no restart. `state_dict` is a dict of
        tensors or `[ObjectRef]` to one. Runs off the event loop so streams keep flowing."""
        return await asyncio.to_thread(self.apply_version, version, state_dict, meta)

    def apply_version(self, version: int, state_dict, meta=None, exact: bool = False) -> dict:
        """Waits for the running generation to finish; requests after it see the new weights.
        Versions not newer than the loaded one are ignored (handle swaps may arrive out of
        order); `exact` (the version board, whose serial already says it is newer): always loaded,
        so a rollback to an older one loads, and so does the board's version 0 on a replica that
        started from another directory (the online service resumed on a later version).
        With `meta` (a PolicyVersion or its ref) the load is verified (weight_sync.load_verified:
        checksum before loading, probe logprobs reported); a failure counts in `swap_errors`
        and raises WeightSyncError."""
        import ray

        start = time.perf_counter()
        busy = self.slot.active  # generations running when the swap was asked for: it waits for them
        with self._swap_lock:
            if version <= self.version and not exact:
                return {"version": self.version, "applied": False}
            if isinstance(state_dict, list):
                state_dict = ray.get(state_dict[0])
            if isinstance(meta, ray.ObjectRef):
                meta = ray.get(meta)
            if meta is None:  # a handle swap without a published record: nothing to verify against
                with self.slot.lock:
                    self.engine.load_weights(state_dict, version)
                diff = 0.0
            else:
                try:
                    if meta.version != version:
                        raise WeightSyncError(f"swap to version {version} with the record of version {meta.version}")
                    who = f"serve replica (pid {os.getpid()})"
                    diff = load_verified(self.engine, state_dict, meta, None, who, lock=self.slot.lock)[
                        "probe_max_diff"
                    ]
                except WeightSyncError:
                    self._swaps["swap_errors"] += 1
                    raise
        self._swaps["swaps"] += 1
        return {
            "version": version,
            "applied": True,
            "probe_max_diff": diff,
            "seconds": time.perf_counter() - start,
            "generations_waited_for": busy,
        }

    def __del__(self):
        self._stop.set()
        self.slot.shutdown()

    # ------------------------------------------------------------- routes (see routes.py)

    async def health(self) -> dict:
        return {"status": "ok", "policy_version": self.version}

    async def models(self, request: Request) -> JSONResponse:
        check_auth(request, self.api_key)
        card = {
            "id": self.cfg.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "rl-service",
            "policy_version": self.version,
            "max_model_len": self.context,
        }
        return JSONResponse({"object": "list", "data": [card]}, headers=_headers(self.version))

    async def completions(self, request: Request):
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: Request):
        return await self._complete(request, chat=True)

    async def feedback(self, request: Request) -> JSONResponse:
        check_auth(request, self.api_key)
        fb = P.parse_feedback(await read_body(request, self.cfg.max_body_bytes), self.cfg.max_abs_rating)
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
                self.store.add_rating, fid, fb.completion_id, fb.choice_index, fb.rating, fb.comment, fb.annotator
            )
        else:
            await asyncio.to_thread(
                self.store.add_preference, fid, fb.prompt, fb.chosen, fb.rejected, fb.comment, fb.annotator
            )
        # Returned only after the commit: an acknowledged row survives a crash.
        return JSONResponse({"id": fid, "object": "feedback", "stored": True})

    # ------------------------------------------------------------- the completion path

    async def _complete(self, request: Request, chat: bool):
        check_auth(request, self.api_key)
        ticket = self.admission.admit()  # before the body is read: overload costs microseconds
        try:
            return await self._answer(request, chat, ticket)
        finally:
            if not ticket.handed_over:  # a started stream releases it when its generation ends
                ticket.release()

    async def _answer(self, request: Request, chat: bool, ticket: Ticket):
        req = P.parse(P.ChatRequest if chat else P.CompletionRequest, await read_body(request, self.cfg.max_body_bytes))
        check_model(req.model, self.cfg.model_name)
        P.check_sampling(req, self.cfg.max_tokens, self.cfg.max_n, self.cfg.max_prompts)
        # The engine gets token ids: a chat's are its template's own (P.chat_prompt_ids), so
        # re-tokenising rendered text can never change them; the text is what gets recorded.
        if chat:
            prompts = [P.render_chat(req.messages, self.tokenizer)]
            prompt_ids = [P.chat_prompt_ids(req.messages, self.tokenizer)]
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if not prompts:
                raise P.APIError(400, "prompt must not be empty", param="prompt")
            prompt_ids = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        max_tokens, prompt_tokens = fit_context(
            self.context, prompt_ids, P.requested_max_tokens(req), self.cfg.default_max_tokens
        )
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
            feed, version = await open_stream(self.engine, self.slot, ticket, prompt_ids, sampling)
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
                req.stop,
                record,
                prompt_tokens if include_usage else None,
            )
            return StreamingResponse(events, media_type="text/event-stream", headers=_headers(version, rid))

        engine = self.engine

        def generate():
            return engine.generate_ids(prompt_ids, **sampling), engine.version

        groups, version = await self.slot.call(generate)
        comps = [c for g in groups for c in g]
        choices = [P.apply_stop(c.text, req.stop, c.finish_reason) for c in comps]
        model = P.served_model(self.cfg.model_name, version)
        await asyncio.to_thread(self.store.record_completion, rid, kind, model, version, per_choice, choices)
        usage = P.usage(prompt_tokens, sum(len(c.token_ids) for c in comps))
        body = (P.chat_body if chat else P.completion_body)(rid, model, choices, usage)
        return JSONResponse(body, headers=_headers(version, rid))


def _headers(version: int, rid: str | None = None) -> dict[str, str]:
    h = {"x-policy-version": str(version)}
    if rid:
        h["x-request-id"] = rid
    return h
