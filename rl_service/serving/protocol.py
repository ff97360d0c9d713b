"""OpenAI wire format: request schemas, the error envelope, chat rendering, response bodies.

Pure: no ray, no engine. Every rejection is an `APIError` that the app turns into
`{"error": {"message", "type", "param", "code"}}` with its status, before any generation.

Statuses (as the field expects): 400 invalid value / malformed JSON, 401 auth, 404 unknown
model or completion id, 413 body too large, 422 schema (wrong types, missing fields),
503 overload (a replica already holds max_ongoing + max_queued requests; `overloaded()`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

MAX_ERROR_MESSAGE = 512
"""Error messages are truncated to this many characters (bounded error bodies)."""
MAX_STOP = 4
"""Stop sequences per request (OpenAI's own limit)."""
MAX_STOP_CHARS = 256
"""Characters per stop sequence."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""`seed` is an int64 (the engines' generators take nothing wider)."""


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


GENERATION_FAILED = "generation failed; see the server log"
STORE_UNAVAILABLE = "the feedback store is unavailable; nothing was stored, retry later"


def store_unavailable() -> APIError:
    """503 when the feedback database cannot be reached: nothing was stored, the client may retry.
    The body is fixed: the driver's error (host, port, user, DSN) stays in the server's log."""
    return APIError(503, STORE_UNAVAILABLE, "server_error", code="store_unavailable", headers={"retry-after": "1"})


def overloaded(limit: int) -> APIError:
    """503 for a replica that already holds `limit` requests (running + waiting for its engine).
    `Retry-After` tells clients (the openai client retries 503s) when to come back."""
    return APIError(
        503,
        f"server overloaded: this replica already holds {limit} requests; retry shortly",
        "server_error",
        code="overloaded",
        headers={"retry-after": "1"},
    )


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    msg = message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."
    return {"error": {"message": msg, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: StrictBool = False
    """Send one last chunk before `[DONE]` with `usage` and no choices."""


class _Request(BaseModel):
    # Unknown fields are ignored (clients send many optional OpenAI fields); known fields
    # are strict: "max_tokens": "10" is a 422, not silently 10.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: StrictFloat | StrictInt = 1.0
    top_p: StrictFloat | StrictInt = 1.0
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None


class CompletionRequest(_Request):
    prompt: StrictStr | list[StrictStr]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: StrictStr | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None


class RatingFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    completion_id: StrictStr
    rating: StrictFloat | StrictInt
    choice_index: StrictInt = 0
    comment: StrictStr | None = None
    annotator: StrictStr | None = Field(None, max_length=200)
    """Who gave the label (any id the client keeps stable): preference.noise=annotators weighs
    each annotator by how well they agree with the others."""


class PreferenceFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: StrictStr
    chosen: StrictStr
    rejected: StrictStr
    comment: StrictStr | None = None
    annotator: StrictStr | None = Field(None, max_length=200)
    """As in RatingFeedback."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _loads(body: bytes) -> Any:
    """Strict JSON: Python's parser also accepts NaN / Infinity, which no JSON client sends and
    which no number field here can hold (a NaN rating would poison every mean it enters)."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise APIError(400, f"malformed JSON body: {err}", code="invalid_json") from None


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Body bytes -> request; malformed JSON -> 400, schema/type errors -> 422."""
    return _validate(model, _loads(body))


def _validate(model: type[BaseModel], data: Any) -> BaseModel:
    if not isinstance(data, dict):
        raise APIError(422, "request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        # `param` names the top-level field (the loc may end in union member tags like `str`).
        raise APIError(
            422, f"{loc}: {e['msg']}", param=str(e["loc"][0]) if e["loc"] else None, code="invalid_type"
        ) from None


def parse_feedback(body: bytes, max_abs_rating: float) -> RatingFeedback | PreferenceFeedback:
    """Body bytes -> a rating (finite, |rating| <= max_abs_rating: 400 otherwise) or a preference."""
    data = _loads(body)
    kind = PreferenceFeedback if isinstance(data, dict) and "chosen" in data else RatingFeedback
    fb = _validate(kind, data)  # the body is parsed once
    if isinstance(fb, RatingFeedback) and not abs(fb.rating) <= max_abs_rating:  # 1e400 parses as inf
        raise APIError(
            400, f"rating must be a finite number in [-{max_abs_rating:g}, {max_abs_rating:g}]", param="rating"
        )
    return fb  # type: ignore[return-value]


def check_sampling(req: _Request, max_tokens_cap: int, max_n: int, max_prompts: int) -> None:
    """Value checks that need no tokenizer (400 each, naming the parameter)."""
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list) and len(req.prompt) > max_prompts:
        raise APIError(400, f"at most {max_prompts} prompts per request (got {len(req.prompt)})", param="prompt")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"stop: at most {MAX_STOP} sequences of <= {MAX_STOP_CHARS} characters", param="stop")
    if req.seed is not None and not SEED_RANGE[0] <= req.seed <= SEED_RANGE[1]:
        raise APIError(400, f"seed must be a 64-bit signed integer (got {req.seed})", param="seed")
    mt = (
        req.max_completion_tokens
        if isinstance(req, ChatRequest) and req.max_completion_tokens is not None
        else req.max_tokens
    )
    if mt is not None and mt <= 0:
        raise APIError(400, f"max_tokens must be >= 1 (got {mt})", param="max_tokens")
    if mt is not None and mt > max_tokens_cap:
        raise APIError(400, f"max_tokens {mt} is above this server's cap of {max_tokens_cap}", param="max_tokens")
    if not 1 <= req.n <= max_n:
        raise APIError(400, f"n must be between 1 and {max_n} (got {req.n})", param="n")
    if not 0 <= req.temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2] (got {req.temperature})", param="temperature")
    if not 0 < req.top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1] (got {req.top_p})", param="top_p")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")


def requested_max_tokens(req: _Request) -> int | None:
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


SIMPLE_CHAT_TEMPLATE = "{role}: {content}\n"
"""Used when the tokenizer has no chat template: one `role: content` line per message,
then `assistant:` to cue the reply."""


def _turns(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text()} for m in messages]


def render_chat(messages: list[ChatMessage], tokenizer) -> str:
    """Prompt text for a chat: the tokenizer's chat template, else SIMPLE_CHAT_TEMPLATE.
    The template's BOS is not repeated: the engine's tokenizer adds its own."""
    turns = _turns(messages)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text
    return "".join(SIMPLE_CHAT_TEMPLATE.format(**t) for t in turns) + "assistant:"


def chat_prompt_ids(messages: list[ChatMessage], tokenizer) -> list[int]:
    """The prompt token ids of a chat, as the engine gets them. With a chat template: exactly
    `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` (the
    template's own special tokens, nothing re-tokenised, so no doubled BOS); without one:
    SIMPLE_CHAT_TEMPLATE's text tokenised as a completion prompt is."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            _turns(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(t) for t in ids]
    return list(tokenizer(render_chat(messages, tokenizer))["input_ids"])


def apply_stop(text: str, stop: str | list[str] | None, finish_reason: str) -> tuple[str, str]:
    """Cut `text` at the first stop string (not included) -> (text, finish_reason)."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], "stop") if cut >= 0 else (text, finish_reason)


class StreamText:
    """The text of one streamed choice, released as it grows. Each `update` gets the decode of
    all ids so far and returns only what can no longer change: a trailing partial UTF-8
    character (U+FFFD) or a tail that could still become a stop string is held back. So the
    streamed pieces always add up to `apply_stop(final text)`, the non-streamed answer."""

    def __init__(self, stop: str | list[str] | None):
        self.stops = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]
        self.sent = ""
        self.stopped = False

    def update(self, text: str, final: bool) -> str:
        """-> the new piece to send ('' for none); sets `stopped` when a stop string ended it."""
        cut, _ = apply_stop(text, self.stops, "")
        if len(cut) < len(text):
            self.stopped, text = True, cut
        elif not final:
            text = text.rstrip("\ufffd")
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - hold]
        if not text.startswith(self.sent):
            return ""  # a decode revised earlier text (rare); the rest is sent when it settles
        piece, self.sent = text[len(self.sent) :], text
        return piece


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def served_model(name: str, version: int) -> str:
    """The `model` field of every response: `policy@v3` = answered by policy version 3."""
    return f"{name}@v{version}"


def completion_body(rid: str, model: str, texts: list[tuple[str, str]], usage: dict) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(texts)],
        "usage": usage,
    }


def chat_body(rid: str, model: str, texts: list[tuple[str, str]], usage: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": f}
            for i, (t, f) in enumerate(texts)
        ],
        "usage": usage,
    }


def stream_chunk(
    chat: bool, rid: str, model: str, index: int, text: str | None, finish_reason: str | None, first: bool = False
) -> str:
    """One server-sent event. Chat chunks carry `delta`; completion chunks carry `text`."""
    created = int(time.time())
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(obj)}\n\n"


def usage_chunk(chat: bool, rid: str, model: str, usage: dict) -> str:
    """The `stream_options.include_usage` event: no choices, the request's token counts."""
    obj = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return f"data: {json.dumps(obj)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


STREAM_DONE = "data: [DONE]\n\n"
