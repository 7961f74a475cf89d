"""The review console: server-rendered pages (Jinja2 + htmx) over keel's API functions.

Mounted at ``/console`` on the API app (:func:`mount`). Every page authenticates the
session's API key through the API's own lookup (:class:`api.deps.ApiState`), reads through
the API's route functions (the same tenant filters, the same ``can_decide``/``refusal``),
and decides through them: Approve, Reject and Edit call :mod:`api.routes.approvals`, which
goes through :func:`api.services.submit_run` and :func:`engine.approvals.validate_resume`
like every other decision. Nothing here is a side door.

Forms are plain HTML forms (they work without JavaScript and from the keyboard) with a CSRF
token; htmx refreshes the queue, the escalations and a running thread's status in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from api.deps import ApiState, correlation_id
from api.models import ActionEditBody, ApproveBody, EditBody, HistoryRequest, RejectBody, ReplayBody
from api.routes import approvals as approvals_api
from api.routes import audit as audit_api
from api.routes import runs as runs_api
from api.routes import threads as threads_api
from api.services import START_ROLES, thread_or_404
from console import escalations as esc
from console.session import COOKIE, PRE_COOKIE, SESSION_MAX_AGE_S, Session, SessionCodec
from console.views import RISKS, SORTS, QueueFilter, amount_fields, before_after, pretty, queue_rows, until_text
from engine.jsonable import jsonable
from guards.dlp import redact
from keel.errors import KeelError
from keel.principals import Principal

__all__ = ["mount", "console_app", "PREFIX"]

PREFIX = "/console"
"""Where the console is mounted."""
_HERE = Path(__file__).parent
_TERMINAL = ("completed", "escalated", "rejected", "error", "dead", "cancelled", "timeout")

log = logging.getLogger("keel.console")
templates = Jinja2Templates(directory=str(_HERE / "templates"))
templates.env.filters["pretty"] = pretty
templates.env.filters["before_after"] = before_after
templates.env.filters["until"] = until_text
templates.env.filters["cents"] = lambda c: f"${int(c or 0) / 100:,.2f}"


class _SignIn(KeelError):
    """The request has no valid session: send the browser to the sign-in page."""


class _Refused(KeelError):
    """A console action the caller may not take (rendered as a message, never a stack trace)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- sessions ---------------------------------------------------------------------------------
def _state(request: Request) -> ApiState:
    return request.app.state.keel


def _codec(request: Request) -> SessionCodec:
    return request.app.state.console_codec


def _session(request: Request) -> tuple[Principal, Session]:
    """The signed-in reviewer (re-authenticated on every request, rate-limited like the API)."""
    session = _codec(request).read(request.cookies.get(COOKIE))
    if session is None:
        raise _SignIn()
    st = _state(request)
    principal = st.authenticate(session.key)
    if principal is None:  # revoked since sign-in
        raise _SignIn()
    wait = st.limiter.take(hashlib.sha256(session.key.encode()).hexdigest())
    if wait > 0:
        raise _Refused(429, f"too many requests; retry in {max(1, int(wait + 0.999))} s")
    request.state.principal = principal
    return principal, session


async def _form(request: Request, session: Session) -> dict[str, str]:
    """The POSTed form, after its CSRF token (field ``csrf`` or header ``X-CSRF-Token``) is checked."""
    body = (await request.body()).decode("utf-8", errors="replace")
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    token = form.get("csrf") or request.headers.get("x-csrf-token")
    if not _codec(request).csrf_ok(session, token):
        raise _Refused(403, "the form's security token is missing or stale; reload the page and try again")
    return form


def _page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    session = getattr(request.state, "session", None)
    base = {"p": principal, "prefix": PREFIX, "csrf": _codec(request).csrf(session) if session else "",
            "path": request.url.path}
    return templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)


def _go(request: Request, url: str) -> Response:
    """Redirect after a POST (htmx follows ``HX-Redirect``; a plain form follows 303)."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _detail(exc: HTTPException) -> str:
    d = exc.detail
    if isinstance(d, list):
        return "; ".join(f"{e.get('field') or e.get('loc')}: {e.get('msg')}" for e in d if isinstance(e, dict))
    return str(d)


def _invalid(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'form'}: {err['msg']}" for err in e.errors()[:3])


# -- the app ----------------------------------------------------------------------------------
def console_app(state: ApiState) -> FastAPI:
    """The console as an ASGI app around the API's state."""
    app = FastAPI(title="keel console", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.keel = state
    app.state.console_codec = SessionCodec(state.runtime.signing_key())
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @app.exception_handler(_SignIn)
    async def sign_in(request: Request, exc: _SignIn) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/login"})
        return RedirectResponse(f"{PREFIX}/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> HTMLResponse:
        return _page(request, "error.html", {"title": "Not allowed", "message": exc.message}, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        return _page(request, "error.html", {"title": "Not found" if exc.status_code == 404 else "Error",
                                              "message": _detail(exc)}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> HTMLResponse:
        log.exception("console error on %s %s", request.method, request.url.path)
        return _page(request, "error.html", {"title": "Error", "message": "internal error; see the server log"}, 500)

    _routes_auth(app)
    _routes_approvals(app)
    _routes_escalations(app)
    _routes_threads(app)
    return app


def mount(api: FastAPI) -> FastAPI:
    """Serve the console at ``/console`` on the API app (its state, middleware and worker)."""
    api.mount(PREFIX, console_app(api.state.keel))
    return api


async def _authed(request: Request) -> Principal:
    principal, session = await to_thread.run_sync(_session, request)
    request.state.session = session
    return principal


# -- sign-in ----------------------------------------------------------------------------------
def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/approvals"


def _routes_auth(app: FastAPI) -> None:
    @app.get("/")
    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/approvals", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "", error: str = "") -> HTMLResponse:
        cookie, token = _codec(request).pre_issue()
        resp = _page(request, "login.html", {"title": "Sign in", "signin_token": token, "next": _safe_next(next),
                                             "error": error}, 401 if error else 200)
        resp.set_cookie(PRE_COOKIE, cookie, max_age=3600, httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/login")
    async def login(request: Request) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        nxt = _safe_next(form.get("next"))
        if not _codec(request).pre_ok(request.cookies.get(PRE_COOKIE), form.get("signin_token")):
            return RedirectResponse(f"{PREFIX}/login?error=stale&next={quote(nxt)}", status_code=303)
        key = (form.get("api_key") or "").strip()
        principal = await to_thread.run_sync(_state(request).authenticate, key) if 0 < len(key) <= 200 else None
        if principal is None:
            return RedirectResponse(f"{PREFIX}/login?error=invalid&next={quote(nxt)}", status_code=303)
        cookie, _ = _codec(request).issue(key)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, cookie, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https")
        resp.delete_cookie(PRE_COOKIE, path=PREFIX)
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await _authed(request)
        await _form(request, request.state.session)
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
        resp.delete_cookie(COOKIE, path=PREFIX)
        return resp


# -- approvals --------------------------------------------------------------------------------
def _queue(st: ApiState, p: Principal, f: QueueFilter) -> dict[str, Any]:
    resp = approvals_api.list_approvals(limit=200, offset=0, st=st, p=p)
    page = json.loads(bytes(resp.body))
    items = page["items"]
    threads = {t["thread_id"]: t for t in st.queue.search_threads(p.tenant, ids=[i["thread_id"] for i in items],
                                                                   limit=len(items) or 1)} if items else {}
    rows = queue_rows(items, threads, f)
    return {"rows": rows, "total": page["total"], "f": f, "sorts": SORTS, "risks": RISKS,
            "routes": sorted({i.get("route") or "" for i in items} - {""}),
            "workflows": sorted({t.get("graph_id") or "" for t in threads.values()} - {""}),
            "now": datetime.now(UTC).strftime("%H:%M:%S UTC")}


def _detail_ctx(st: ApiState, p: Principal, thread_id: str) -> dict[str, Any]:
    detail = approvals_api.get_approval(thread_id, st=st, p=p)
    th = thread_or_404(st.queue, p, thread_id)
    snap = st.runtime.graph(th["graph_id"]).get_state({"configurable": {"thread_id": thread_id}})
    values = jsonable(snap.values) if snap is not None else {}  # typed state (pydantic) as JSON
    req = detail["request"]
    pack = st.runtime.policy
    return {
        "d": detail, "req": req, "ticket": redact(values.get("ticket") or {}),
        "evidence": redact(detail.get("evidence") or []), "injection": req.get("injection") or {},
        "articles": redact(((values.get("context") or {}).get("articles")) or []),
        "amounts": amount_fields(detail.get("plan")), "graph_id": th["graph_id"],
        "versions": {"policy pack": req.get("policy_version") or pack.version,
                     "policy sha256": getattr(pack, "sha256", ""), "graph": th["graph_id"],
                     "model route": f"{st.runtime.settings.model_provider} (fallbacks: "
                                    f"{', '.join(st.runtime.settings.model_fallbacks)})",
                     "ticket route": req.get("route") or ""},
    }


async def _decide(request: Request, thread_id: str, kind: str) -> Response:
    p = await _authed(request)
    form = await _form(request, request.state.session)
    st, cid = _state(request), correlation_id(request)
    plan_hash, reason = form.get("plan_hash", ""), form.get("reason", "").strip()
    try:
        if kind == "reject":
            if not reason:
                raise _Refused(422, "a rejection needs a reason: say why the plan is wrong")
            await approvals_api.reject(thread_id, RejectBody(plan_hash=plan_hash, reason=reason, wait=False), st, p, cid)
        elif kind == "edit":
            edits = _edits(form)
            await approvals_api.edit_then_approve(thread_id, EditBody(plan_hash=plan_hash, reason=reason, edits=edits,
                                                                      wait=False), st, p, cid)
        else:
            await approvals_api.approve(thread_id, ApproveBody(plan_hash=plan_hash, reason=reason, wait=False), st, p, cid)
    except ValidationError as e:
        return await _detail_again(request, p, thread_id, 422, _invalid(e))
    except _Refused as e:
        return await _detail_again(request, p, thread_id, e.status, e.message)
    except HTTPException as e:
        if e.status_code == 404:
            raise
        return await _detail_again(request, p, thread_id, e.status_code, _detail(e))
    return _go(request, f"{PREFIX}/threads/{thread_id}?decided={kind}&was={plan_hash}")


def _edits(form: dict[str, str]) -> list[ActionEditBody]:
    """``amount_<index>`` fields that changed, as downward edits (the engine re-validates them)."""
    edits = []
    for name, value in form.items():
        if not name.startswith("amount_") or not value.strip():
            continue
        index = name.removeprefix("amount_")
        if not index.isdigit():
            raise _Refused(422, f"unknown field {name}")
        try:
            cents = round(float(value) * 100)
        except ValueError:
            raise _Refused(422, f"{value!r} is not an amount") from None
        if str(cents) != form.get(f"was_{index}"):
            edits.append(ActionEditBody(index=int(index), args={"amount_cents": cents}))
    if not edits:
        raise _Refused(422, "change at least one amount to edit the plan (or approve it as shown)")
    return edits


async def _detail_again(request: Request, p: Principal, thread_id: str, status: int, message: str) -> HTMLResponse:
    ctx = await to_thread.run_sync(_detail_ctx, _state(request), p, thread_id)
    return _page(request, "detail.html", {**ctx, "title": f"Approval {ctx['req'].get('ticket_id')}", "error": message},
                 status)


def _routes_approvals(app: FastAPI) -> None:
    @app.get("/approvals", response_class=HTMLResponse)
    async def queue_page(request: Request) -> HTMLResponse:
        p = await _authed(request)
        f = QueueFilter.parse(dict(request.query_params))
        ctx = await to_thread.run_sync(_queue, _state(request), p, f)
        return _page(request, "queue.html", {**ctx, "title": "Approvals", "qs": request.url.query})

    @app.get("/approvals/rows", response_class=HTMLResponse)
    async def queue_rows_fragment(request: Request) -> HTMLResponse:
        p = await _authed(request)
        f = QueueFilter.parse(dict(request.query_params))
        ctx = await to_thread.run_sync(_queue, _state(request), p, f)
        return _page(request, "_queue_rows.html", ctx)

    @app.get("/approvals/{thread_id}", response_class=HTMLResponse)
    async def detail_page(request: Request, thread_id: str) -> HTMLResponse:
        p = await _authed(request)
        ctx = await to_thread.run_sync(_detail_ctx, _state(request), p, thread_id)
        return _page(request, "detail.html", {**ctx, "title": f"Approval {ctx['req'].get('ticket_id')}"})

    @app.post("/approvals/{thread_id}/approve")
    async def approve(request: Request, thread_id: str) -> Response:
        return await _decide(request, thread_id, "approve")

    @app.post("/approvals/{thread_id}/reject")
    async def reject(request: Request, thread_id: str) -> Response:
        return await _decide(request, thread_id, "reject")

    @app.post("/approvals/{thread_id}/edit")
    async def edit(request: Request, thread_id: str) -> Response:
        return await _decide(request, thread_id, "edit")


# -- escalations ------------------------------------------------------------------------------
def _escalations(st: ApiState, p: Principal) -> list[Any]:
    try:
        return esc.listing(st, p)
    except esc.EscalationRefused as e:
        raise _Refused(e.status, e.message) from None


def _routes_escalations(app: FastAPI) -> None:
    @app.get("/escalations", response_class=HTMLResponse)
    async def escalations_page(request: Request) -> HTMLResponse:
        p = await _authed(request)
        items = await to_thread.run_sync(_escalations, _state(request), p)
        return _page(request, "escalations.html", {"title": "Escalations", "items": items})

    @app.get("/escalations/rows", response_class=HTMLResponse)
    async def escalation_rows(request: Request) -> HTMLResponse:
        p = await _authed(request)
        items = await to_thread.run_sync(_escalations, _state(request), p)
        return _page(request, "_escalation_rows.html", {"items": items})

    @app.post("/escalations/{thread_id}/{action}")
    async def act(request: Request, thread_id: str, action: str) -> Response:
        p = await _authed(request)
        form = await _form(request, request.state.session)
        st = _state(request)
        try:
            await to_thread.run_sync(esc.act, st, p, thread_id, action, form, correlation_id(request))
        except esc.EscalationRefused as e:
            raise _Refused(e.status, e.message) from None
        return _go(request, f"{PREFIX}/escalations#esc-{thread_id}")


# -- threads ----------------------------------------------------------------------------------
def _thread_ctx(st: ApiState, p: Principal, thread_id: str) -> dict[str, Any]:
    th = thread_or_404(st.queue, p, thread_id)
    history = threads_api.thread_history(thread_id, HistoryRequest(limit=100), st=st, p=p) if th.get("graph_id") else []
    audit = audit_api.thread_audit(thread_id, limit=1000, offset=0, st=st, p=p)["items"]
    chain = audit_api.verify_audit(st=st, p=p)
    runs = st.queue.list_runs(p.tenant, thread_id, limit=20, offset=0) if hasattr(st.queue, "list_runs") else []
    values = history[0]["values"] if history else {}
    status = values.get("status") if isinstance(values, dict) else None
    return {"th": th, "history": history, "audit": audit, "chain": chain, "runs": runs,
            "run_status": status or th["status"], "values": values,
            "busy": th["status"] == "busy" or any(r["status"] in ("pending", "running") for r in runs),
            "plan_hash": _plan_hash(values),
            "can_replay": p.role in START_ROLES, "escalation": esc.record_for(st, p, thread_id)}


def _plan_hash(values: Any) -> str:
    """The hash of the thread's current signed plan (after an edit: the edited plan's)."""
    if not isinstance(values, dict):
        return ""
    plan, approval = values.get("plan"), values.get("approval")
    return str((plan or {}).get("hash") or (approval or {}).get("plan_hash") or "") if isinstance(plan or {}, dict) else ""


def _routes_threads(app: FastAPI) -> None:
    @app.get("/threads/{thread_id}", response_class=HTMLResponse)
    async def thread_page(request: Request, thread_id: str, decided: str = "", was: str = "") -> HTMLResponse:
        p = await _authed(request)
        ctx = await to_thread.run_sync(_thread_ctx, _state(request), p, thread_id)
        return _page(request, "thread.html", {**ctx, "title": "Thread", "decided": decided, "was": was})

    @app.get("/threads/{thread_id}/status", response_class=HTMLResponse)
    async def thread_status(request: Request, thread_id: str, decided: str = "") -> HTMLResponse:
        """The status fragment a page polls while the run works; once it is done, the
        whole page reloads (``HX-Refresh``) so the audit trail and checkpoints are current."""
        p = await _authed(request)
        ctx = await to_thread.run_sync(_thread_ctx, _state(request), p, thread_id)
        resp = _page(request, "_thread_status.html", {**ctx, "decided": decided})
        if request.headers.get("hx-request") and not ctx["busy"] and not (decided and ctx["run_status"] == "awaiting_approval"):
            resp.headers["HX-Refresh"] = "true"
        return resp

    @app.post("/threads/{thread_id}/replay")
    async def replay(request: Request, thread_id: str) -> Response:
        p = await _authed(request)
        form = await _form(request, request.state.session)
        if p.role not in START_ROLES:
            raise _Refused(403, f"replay and fork need role {' or '.join(START_ROLES)}; you are {p.role}")
        try:
            body = ReplayBody(checkpoint_id=form.get("checkpoint_id", ""), fork=form.get("fork") == "1", wait=False)
        except ValidationError as e:
            raise _Refused(422, _invalid(e)) from None
        out = await threads_api.replay_thread(thread_id, body, _state(request), p, correlation_id(request))
        return _go(request, f"{PREFIX}/threads/{out['thread_id']}")

    @app.post("/threads/{thread_id}/runs/{run_id}/cancel")
    async def cancel(request: Request, thread_id: str, run_id: str) -> Response:
        p = await _authed(request)
        await _form(request, request.state.session)
        if p.role != "admin":
            raise _Refused(403, "only an admin can cancel a run")
        await runs_api.cancel_run(thread_id, run_id, wait=0, action="interrupt", st=_state(request), p=p)
        return _go(request, f"{PREFIX}/threads/{thread_id}")
