"""The FastAPI application: LangGraph-Server-compatible resources plus keel's own.

``create_app(runtime, embedded_worker=...)`` builds the app around one
:class:`engine.runtime.Runtime`. With ``embedded_worker`` a worker thread executes queued
runs in this process (the embedded SQLite default); otherwise ``keel worker`` processes
do. The OpenAPI document is at ``/openapi.json`` (``/docs`` renders it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ApiState, get_principal, sane_request_id
from api.models import ErrorOut, KeelJSONResponse
from api.ratelimit import rate_limiter
from api.routes import ROUTERS
from engine.correlation import correlation_var
from engine.tracing import install_tracing
from keel.telemetry import SpanStore, request_span
from engine.queue import RunQueue
from engine.runtime import Runtime
from engine.worker import start_embedded_worker

__all__ = ["create_app", "DEFAULT_RATE_PER_MINUTE", "DEFAULT_MAX_BODY_BYTES", "MAX_JSON_DEPTH", "BodyProblem",
           "json_body_problem"]

log = logging.getLogger("keel.api")

DEFAULT_RATE_PER_MINUTE = 1200
"""Requests per minute per API key (burst: the same number)."""
DEFAULT_MAX_BODY_BYTES = 1_048_576
"""Largest accepted request body (413 beyond)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a JSON request body (422 beyond)."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integers outside this range are refused: LangGraph's checkpoint serializer (msgpack), SQL
integers and most JSON clients cannot hold them, so a run given one fails later."""


@dataclass(frozen=True)
class BodyProblem:
    """Why a JSON request body is refused before any route sees it (422)."""

    code: str
    """Machine-readable reason (``invalid_json``, ``number_out_of_range``, ``invalid_value``, ``nesting_too_deep``)."""
    msg: str
    """What is wrong."""
    path: tuple[str | int, ...] = ()
    """Where in the body (object keys and array indexes); empty for the body as a whole."""


@dataclass(frozen=True)
class _BadNumber:
    """What the parser hooks put in the document in place of a number keel cannot store,
    so the walk can name the field it sits in (the hooks do not know where they are)."""

    code: str
    msg: str


def _clip(token: str) -> str:
    return token if len(token) <= 24 else token[:20] + "…"


class _NumberHooks:
    """``json.loads`` hooks that put a :class:`_BadNumber` in place of each number keel cannot
    store and note that they did, so a clean body needs no walk."""

    def __init__(self) -> None:
        self.bad = False

    def _refuse(self, code: str, msg: str) -> _BadNumber:
        self.bad = True
        return _BadNumber(code, msg)

    def on_constant(self, token: str) -> _BadNumber:
        return self._refuse("invalid_json", f"{token} is not a JSON number")

    def on_float(self, token: str) -> float | _BadNumber:
        value = float(token)
        if math.isfinite(value):
            return value
        return self._refuse("number_out_of_range",
                            f"{_clip(token)} is not a finite number (it overflows a 64-bit float)")

    def on_int(self, token: str) -> int | _BadNumber:
        if len(token) <= 20:  # longer cannot fit, and int() of thousands of digits is refused by Python
            value = int(token)
            if INT64_MIN <= value <= INT64_MAX:
                return value
        return self._refuse("number_out_of_range", f"{_clip(token)} is outside the 64-bit integer range")


def json_body_problem(body: bytes) -> BodyProblem | None:
    """The first reason a JSON request body must be refused before any route sees it, with
    the path of the field at fault; None if the body may pass.

    Refused, at any depth: numbers keel cannot store and read back (``NaN``/``Infinity``,
    which are not JSON though Python's parser takes them; literals that overflow a double
    such as ``1e999``/``-1e999``; integers beyond 64 bits), NUL characters and unpaired
    surrogates in strings or keys (PostgreSQL cannot store the one, no response can encode
    the other), and nesting deeper than :data:`MAX_JSON_DEPTH` (responses echoing such data
    fail to serialize). Accepting any of these would store a value that later breaks the run
    or every read of the thread, so one check here covers every route and field. A body
    that is not JSON at all is left to the route (422/400 as usual). The parse's number
    hooks see every number; the walk that names the field runs only when one was bad, or
    when a ``\\u`` escape or enough brackets to nest that deep make a string or the depth
    suspect (a plain JSON parse is cheaper than scanning the bytes for risky literals).
    """
    if not body:
        return None
    hooks = _NumberHooks()
    try:
        doc = json.loads(body, parse_constant=hooks.on_constant, parse_float=hooks.on_float, parse_int=hooks.on_int)
    except RecursionError:
        return BodyProblem("nesting_too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    except ValueError:  # not JSON (or not UTF-8): the route's own parsing answers
        return None
    if not hooks.bad and b"\\u" not in body and body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH:
        return None
    return _first_problem(doc)


def _first_problem(doc: Any) -> BodyProblem | None:
    """Walk the parsed body in document order (iteratively: it may be deep)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _BadNumber):
            return BodyProblem(node.code, node.msg, path)
        if isinstance(node, str):
            if _UNSTORABLE.search(node):
                return BodyProblem("invalid_value", "a string contains a NUL character or an unpaired surrogate", path)
        elif isinstance(node, (dict, list)):
            if len(path) >= MAX_JSON_DEPTH:
                return BodyProblem("nesting_too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels", path)
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            for k, _ in items:
                if isinstance(k, str) and _UNSTORABLE.search(k):
                    return BodyProblem("invalid_value", "a key contains a NUL character or an unpaired surrogate",
                                       path + (k.encode("unicode_escape").decode("ascii"),))
            stack.extend((v, path + (k,)) for k, v in reversed(items))
    return None


class _RequestContext:
    """Pure ASGI middleware: correlation id in and out, the request-size limit, and the
    JSON values no route may store (:func:`json_body_problem`, 422).

    The body is read up to the limit before the app sees it, so an oversized or lying
    (chunked, no Content-Length) request is answered 413 without being buffered whole.
    """

    def __init__(self, app: ASGIApp, max_body: int, spans: SpanStore | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_span(scope, self.spans) as on_status:  # the trace its runs continue (keel.telemetry)

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    on_status(message["status"])
                await send(message)

            await self._handle(scope, receive, send_traced)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
                problem = json_body_problem(bytes(body))
                if problem is not None:
                    await self._refuse_field(send_with_id, cid, problem)
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
        await self._refuse(send, cid, 413, "payload_too_large", f"request body exceeds {self.max_body} bytes")

    @classmethod
    async def _refuse_field(cls, send: Send, cid: str, problem: BodyProblem) -> None:
        """422 shaped like a validation error: the field path in ``detail[].loc``/``field`` and ``reason``."""
        loc = ["body", *problem.path]
        field = ".".join(str(x) for x in problem.path)
        detail = [{"loc": loc, "field": field, "msg": problem.msg, "type": problem.code}]
        await cls._refuse(send, cid, 422, problem.code, detail, reason=f"{field or 'body'}: {problem.msg}")

    @staticmethod
    async def _refuse(send: Send, cid: str, status: int, code: str, detail: str | list[dict[str, Any]],
                      reason: str | None = None) -> None:
        out: dict[str, Any] = {"detail": detail, "code": code}
        if reason is not None:
            out["reason"] = reason
        body = json.dumps({**out, "request_id": cid}).encode()
        await send({"type": "http.response.start", "status": status,
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
    runtime: Runtime,
    *,
    embedded_worker: bool,
    rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    worker_concurrency: int = 1,
    worker_kwargs: dict[str, Any] | None = None,
) -> FastAPI:
    """The keel API around ``runtime`` (its database also holds the run queue)."""
    queue = RunQueue(runtime.db).setup()
    state = ApiState(runtime=runtime, queue=queue, limiter=rate_limiter(runtime.db, rate_per_minute), max_body_bytes=max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = None
        listening = queue.start_listener()  # Postgres: runs finished by other processes wake waiters
        if embedded_worker:
            stop = start_embedded_worker(runtime, queue, concurrency=worker_concurrency, **(worker_kwargs or {}))
        try:
            yield
        finally:
            if stop is not None:
                stop.set()
                queue.wake_all()
            if listening:
                queue.stop_listener()

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
        default_response_class=KeelJSONResponse,  # non-finite floats read back as null (api.models.json_bytes)
        # keel's middleware makes the request span (redacted, tied to the run's trace): not FastAPI's too
        telemetry={"tracing": False, "operation_spans": False},
    )
    app.state.keel = state

    @app.exception_handler(StarletteHTTPException)
    async def http_exc(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {400: "invalid_body", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                                              405: "method_not_allowed", 409: "conflict", 429: "rate_limited"}.get(exc.status_code)
        return JSONResponse({"detail": exc.detail, "code": code, "request_id": _cid(request)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_exc(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = _reasons(exc)
        summary = "; ".join(f"{r['field'] or 'body'}: {r['msg']}" for r in reasons[:5])
        return JSONResponse({"detail": reasons, "code": "invalid_request", "reason": summary, "request_id": _cid(request)},
                            status_code=422)

    @app.exception_handler(psycopg.DataError)
    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        # a value the database cannot store (NUL bytes, out-of-range numbers): the input's fault
        return JSONResponse({"detail": "a value in the request cannot be stored (e.g. NUL characters)",
                             "code": "invalid_value", "request_id": _cid(request)}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # the database is restarting, overloaded (the pool's PoolTimeout) or chose this
        # transaction as a deadlock victim (all psycopg OperationalErrors): the open
        # transaction was rolled back, and keel's writes are idempotent or keyed
        # (decisions, run submissions), so the client's retry is safe
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "the database is briefly unavailable; retry the request",
                             "code": "unavailable", "request_id": _cid(request)},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error", "code": "internal", "request_id": _cid(request)},
                            status_code=500)

    for r in ROUTERS:
        app.include_router(r)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_errors(FastAPI.openapi(app))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_RequestContext, max_body=max_body_bytes, spans=install_tracing(runtime))  # type: ignore[arg-type]
    origins = runtime.settings.cors_origins
    if origins:  # outermost: a browser's preflight is answered before the body guard and auth
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           allow_credentials=False, allow_private_network=True,  # Studio calling a loopback keel
                           expose_headers=["Location", "Content-Location", "Retry-After", "X-Pagination-Next"])
    return app


_SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}


def _uses(dependant: Any, fn: Any) -> bool:
    return any(d.call is fn or _uses(d, fn) for d in dependant.dependencies)


def _document_errors(doc: dict[str, Any]) -> None:
    """Add to each operation of the OpenAPI document the error responses it can give (all
    shaped :class:`api.models.ErrorOut`) and the API-key security schemes.

    401/403/429/503 where a key is needed, 404 where an id is named, 409 on writes, 413 and 400
    where a body is read, 422 wherever input is validated (FastAPI's default 422 schema
    does not match keel's error body, which is replaced).
    """
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    err = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in err.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault("ErrorOut", err)
    doc["components"]["securitySchemes"] = _SECURITY_SCHEMES
    authed = {(r.path, m.lower()): _uses(r.dependant, get_principal)
              for router in ROUTERS for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    reasons = {400: "Body is not valid JSON", 401: "Missing, unknown or revoked API key",
               403: "Not allowed for this key (role, tenant or separation of duties)",
               404: "Not found (another tenant's resource looks missing)", 409: "Conflicts with the current state",
               413: "Request body too large", 422: "Invalid input", 429: "Rate limit exceeded (see Retry-After)",
               503: "Database briefly unavailable; retry (see Retry-After)"}
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            writes = method in ("post", "put", "patch", "delete")
            codes = set()
            if authed.get((path, method)):
                codes |= {401, 403, 429, 503}  # the key is looked up in the database
                op["security"] = [{"ApiKey": []}, {"Bearer": []}]
            if "{" in path or any(p.get("name", "").endswith("_id") for p in op.get("parameters", [])):
                codes.add(404)
            if path.startswith("/runs"):  # the body names an assistant
                codes.add(404)
            if writes:
                codes |= {409, 413, 422}
            if "requestBody" in op:
                codes |= {400, 413, 422}
            if op.get("parameters"):
                codes.add(422)
            responses = op.setdefault("responses", {})
            for code in sorted(codes):
                key = str(code)
                current = responses.get(key, {}).get("content", {}).get("application/json", {}).get("schema", {})
                if key not in responses or current.get("$ref") == "#/components/schemas/HTTPValidationError":
                    responses[key] = {"description": reasons[code], "content": ref}
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, replaced above
        if f"#/components/schemas/{unused}" not in json.dumps(doc):
            schemas.pop(unused, None)
