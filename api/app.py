"""The FastAPI application: LangGraph-Server-compatible resources plus keel's own.

``create_app(runtime, embedded_worker=...)`` builds the app around one
:class:`keel.runtime.Runtime`. With ``embedded_worker`` a worker thread executes queued
runs in this process (the embedded SQLite default); otherwise ``keel worker`` processes
do. The OpenAPI document is at ``/openapi.json`` (``/docs`` renders it).
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ApiState, RateLimiter, correlation_var, sane_request_id
from api.queue import RunQueue

__all__ = ["create_app", "DEFAULT_RATE_PER_MINUTE", "DEFAULT_MAX_BODY_BYTES"]

log = logging.getLogger("keel.api")

DEFAULT_RATE_PER_MINUTE = 1200
"""Requests per minute per API key (burst: the same number)."""
DEFAULT_MAX_BODY_BYTES = 1_048_576
"""Largest accepted request body (413 beyond)."""


class _RequestContext:
    """Pure ASGI middleware: correlation id in and out, and the request-size limit.

    The body is read up to the limit before the app sees it, so an oversized or lying
    (chunked, no Content-Length) request is answered 413 without being buffered whole.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cid = sane_request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["correlation_id"] = cid
        token = correlation_var.set(cid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                hs = list(message.get("headers", []))
                hs.append((b"x-request-id", cid.encode()))
                message = {**message, "headers": hs}
            await send(message)

        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._too_large(send_with_id, cid)
                return
            if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                body = bytearray()
                more = True
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body += msg.get("body", b"")
                    more = msg.get("more_body", False)
                    if len(body) > self.max_body:
                        await self._too_large(send_with_id, cid)
                        return
                sent = False

                async def replay() -> Message:
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": bytes(body), "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            correlation_var.reset(token)

    async def _too_large(self, send: Send, cid: str) -> None:
        body = json.dumps({"detail": f"request body exceeds {self.max_body} bytes", "code": "payload_too_large",
                           "request_id": cid}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _cid(request: Request) -> str | None:
    return getattr(request.state, "correlation_id", None)


def _reasons(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        out.append({"loc": loc, "field": ".".join(loc[1:]) or (loc[0] if loc else ""), "msg": e.get("msg", ""),
                    "type": e.get("type", "")})
    return out


def create_app(
    runtime: Any,
    *,
    embedded_worker: bool,
    rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    worker_concurrency: int = 1,
    worker_kwargs: dict[str, Any] | None = None,
) -> FastAPI:
    """The keel API around ``runtime`` (its database also holds the run queue)."""
    queue = RunQueue(runtime.db).setup()
    state = ApiState(runtime=runtime, queue=queue, limiter=RateLimiter(rate_per_minute), max_body_bytes=max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = None
        if embedded_worker:
            from api.worker import start_embedded_worker

            stop = start_embedded_worker(runtime, queue, concurrency=worker_concurrency, **(worker_kwargs or {}))
        try:
            yield
        finally:
            if stop is not None:
                stop.set()
                queue.notify()

    app = FastAPI(
        title="keel",
        version="0.1.0",
        description=(
            "Customer-support agent workflows as LangGraph state graphs. LangGraph-Server-compatible "
            "assistants, threads and runs (drive it with langgraph-sdk), plus approvals with separation of "
            "duties, a hash-chained audit trail, replay/fork, tickets, fixtures and dead letters. "
            "Authenticate with `x-api-key: KEY` or `Authorization: Bearer KEY`."
        ),
        lifespan=lifespan,
    )
    app.state.keel = state

    @app.exception_handler(StarletteHTTPException)
    async def http_exc(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {401: "unauthorized", 403: "forbidden", 404: "not_found",
                                              405: "method_not_allowed", 409: "conflict", 429: "rate_limited"}.get(exc.status_code)
        return JSONResponse({"detail": exc.detail, "code": code, "request_id": _cid(request)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_exc(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = _reasons(exc)
        summary = "; ".join(f"{r['field'] or 'body'}: {r['msg']}" for r in reasons[:5])
        return JSONResponse({"detail": reasons, "code": "invalid_request", "reason": summary, "request_id": _cid(request)},
                            status_code=422)

    try:
        from psycopg import DataError as _PgDataError
    except ImportError:  # pragma: no cover
        _PgDataError = None

    if _PgDataError is not None:
        @app.exception_handler(_PgDataError)
        async def data_error(request: Request, exc: Exception) -> JSONResponse:
            # a value the database cannot store (NUL bytes, out-of-range numbers): the input's fault
            return JSONResponse({"detail": "a value in the request cannot be stored (e.g. NUL characters)",
                                 "code": "invalid_value", "request_id": _cid(request)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error", "code": "internal", "request_id": _cid(request)},
                            status_code=500)

    from api.routes import ROUTERS

    for r in ROUTERS:
        app.include_router(r)
    app.add_middleware(_RequestContext, max_body=max_body_bytes)  # type: ignore[arg-type]
    return app
