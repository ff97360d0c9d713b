"""Request checks that run before the engine is touched: auth, body cap, model name, context fit.

Each raises the OpenAI error envelope (protocol.APIError) for its status: 401 missing or wrong
key, 413 body above the cap (refused without reading the rest), 404 unknown model, 400 prompt
plus max_tokens past the model's context. A refused request starts no generation.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from rl_service.serving import protocol as P


def check_auth(request: Request, api_key: str | None) -> None:
    """401 unless `Authorization: Bearer <api_key>` (no key configured: every request passes)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    token = header[7:] if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise P.APIError(
            401,
            "missing or invalid API key (send Authorization: Bearer <key>)",
            "authentication_error",
            code="invalid_api_key",
        )


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 past `cap` bytes without reading the rest."""
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


def check_model(name: str, served: str) -> None:
    """404 unless `name` is the served name or a `served@vN` echoed back from a response
    (the newest loaded version answers either way)."""
    if name != served and not (name.startswith(served + "@v") and name[len(served) + 2 :].isdigit()):
        raise P.APIError(
            404,
            f"model {name!r} does not exist (served: {served!r})",
            "not_found_error",
            param="model",
            code="model_not_found",
        )


def fit_context(context: int, prompt_ids: list[list[int]], asked: int | None, default: int) -> tuple[int, int]:
    """-> (max_tokens, prompt tokens of all prompts); 400 when the longest prompt plus max_tokens
    exceeds the model's `context`. `asked` None: `default`, cut to the room left."""
    lengths = [len(ids) for ids in prompt_ids]
    longest = max(lengths)
    room = context - longest
    if room < 1:
        raise P.APIError(
            400,
            f"prompt is {longest} tokens; the model's context is {context}",
            param="prompt",
            code="context_length_exceeded",
        )
    if asked is None:
        return min(default, room), sum(lengths)
    if asked > room:
        raise P.APIError(
            400,
            f"prompt ({longest} tokens) + max_tokens ({asked}) exceeds the model's context of {context} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return asked, sum(lengths)
