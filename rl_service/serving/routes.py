"""The HTTP surface: which URL calls which PolicyServer method, and how errors become envelopes.

    GET  /health               PolicyServer.health            no auth
    GET  /v1/models            PolicyServer.models
    POST /v1/completions       PolicyServer.completions       (stream: SSE)
    POST /v1/chat/completions  PolicyServer.chat_completions  (stream: SSE)
    POST /v1/feedback          PolicyServer.feedback

Every error answers in the OpenAI envelope `{"error": {message, type, param, code}}`: the
app's own (protocol.APIError, with its status and headers), the feedback store down (503),
unknown routes (404), schema errors (422) and anything unexpected (500). Bodies never carry
internals (a driver's error text, a traceback): those go to the server log.

`build_api(target)` makes a fresh FastAPI app each call. Given the class, its routes are the
class's methods: Serve's ingress (applied in rl_service/infra/placement.py) injects the replica
as `self`. Given an instance, the routes are its bound methods: a plain ASGI app, no Serve
(unit tests drive it with a TestClient).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rl_service.serving import protocol as P
from rl_service.serving.feedback import StoreUnavailable

log = logging.getLogger(__name__)

ROUTES = (
    ("GET", "/health", "health"),
    ("GET", "/v1/models", "models"),
    ("POST", "/v1/completions", "completions"),
    ("POST", "/v1/chat/completions", "chat_completions"),
    ("POST", "/v1/feedback", "feedback"),
)
"""(method, path, name of the PolicyServer method that answers it)."""


async def _api_error(_request: Request, err: P.APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _store_down(request: Request, err: StoreUnavailable) -> JSONResponse:
    log.warning("feedback store unavailable: %s", err)  # the details, for the operator only
    return await _api_error(request, P.store_unavailable())  # the store reconnects on the next call


async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return JSONResponse(P.envelope(str(err.detail), kind), status_code=err.status_code)


async def _schema_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(P.envelope(str(err.errors()[:1]), "invalid_request_error", code="invalid_type"), 422)


async def _internal_error(_request: Request, err: Exception) -> JSONResponse:
    log.error("unhandled error answering a request", exc_info=err)  # details for the operator only
    return JSONResponse(P.envelope("internal server error", "server_error", code="internal_error"), 500)


def build_api(target) -> FastAPI:
    """A new FastAPI app with ROUTES answered by `target`'s methods (the class, for Serve's
    class-based ingress, or one instance, for a plain app) and the envelope error handlers."""
    api = FastAPI(title="rl-service policy", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_exception_handler(P.APIError, _api_error)
    api.add_exception_handler(StoreUnavailable, _store_down)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _schema_error)
    api.add_exception_handler(Exception, _internal_error)  # a 500 in the envelope, no traceback text
    for method, path, name in ROUTES:
        api.add_api_route(path, getattr(target, name), methods=[method])
    return api
