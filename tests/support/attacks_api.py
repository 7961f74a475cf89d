"""Helpers of ``tests/test_attacks_api.py``: a served keel with two tenants' data and keys
for every role, the schemathesis driver, bodies that must be refused, and scanners that
look for secrets in a database or a data directory."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import httpx

from guards.pack import load_policy
from support.api_helpers import demo_tickets, load_demo, new_tenant, serve_in_thread

ROLES = ("requester", "approver", "admin")
EVERYONE = frozenset(ROLES)
STARTERS = frozenset({"requester", "admin"})
DECIDERS = frozenset(load_policy().approvals.approver_roles)
"""Who approves or rejects: the shipped policy pack's ``[approvals] approver_roles``."""
REVIEWERS = frozenset({"approver", "admin"})
"""Who reads the tenant's audit log and dead letters (a role rule of the API, not the pack's)."""
ADMINS = frozenset({"admin"})
NOBODY: frozenset[str] = frozenset()

ROLE_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/assistants/search"): EVERYONE,
    ("POST", "/assistants/count"): EVERYONE,
    ("GET", "/assistants/{assistant_id}"): EVERYONE,
    ("GET", "/assistants/{assistant_id}/graph"): EVERYONE,
    ("GET", "/assistants/{assistant_id}/schemas"): EVERYONE,
    ("POST", "/assistants"): ADMINS,
    ("PATCH", "/assistants/{assistant_id}"): ADMINS,
    ("DELETE", "/assistants/{assistant_id}"): ADMINS,
    ("POST", "/assistants/{assistant_id}/versions"): EVERYONE,
    ("POST", "/assistants/{assistant_id}/latest"): ADMINS,
    ("GET", "/assistants/{assistant_id}/subgraphs"): EVERYONE,
    ("GET", "/assistants/{assistant_id}/subgraphs/{namespace}"): EVERYONE,
    ("POST", "/threads"): EVERYONE,
    ("POST", "/threads/search"): EVERYONE,
    ("POST", "/threads/count"): EVERYONE,
    ("GET", "/threads/{thread_id}"): EVERYONE,
    ("PATCH", "/threads/{thread_id}"): EVERYONE,
    ("DELETE", "/threads/{thread_id}"): STARTERS,
    ("GET", "/threads/{thread_id}/state"): EVERYONE,
    ("POST", "/threads/{thread_id}/state"): NOBODY,  # on a thread waiting for a plan approval (as tested)
    ("POST", "/threads/{thread_id}/copy"): STARTERS,
    ("PUT", "/store/items"): STARTERS,
    ("GET", "/store/items"): EVERYONE,
    ("DELETE", "/store/items"): STARTERS,
    ("POST", "/store/items/search"): EVERYONE,
    ("POST", "/store/namespaces"): EVERYONE,
    ("POST", "/runs/crons"): STARTERS,
    ("POST", "/threads/{thread_id}/runs/crons"): STARTERS,
    ("POST", "/runs/crons/search"): EVERYONE,
    ("POST", "/runs/crons/count"): EVERYONE,
    ("DELETE", "/runs/crons/{cron_id}"): STARTERS,
    ("GET", "/threads/{thread_id}/state/{checkpoint_id}"): EVERYONE,
    ("POST", "/threads/{thread_id}/state/checkpoint"): EVERYONE,
    ("POST", "/threads/{thread_id}/history"): EVERYONE,
    ("POST", "/threads/{thread_id}/replay"): STARTERS,
    ("POST", "/threads/{thread_id}/runs"): STARTERS,
    ("POST", "/runs"): STARTERS,
    ("POST", "/runs/wait"): STARTERS,
    ("POST", "/runs/stream"): STARTERS,
    ("GET", "/threads/{thread_id}/runs"): EVERYONE,
    ("POST", "/threads/{thread_id}/runs/wait"): STARTERS,
    ("POST", "/threads/{thread_id}/runs/stream"): STARTERS,
    ("GET", "/threads/{thread_id}/runs/{run_id}"): EVERYONE,
    ("DELETE", "/threads/{thread_id}/runs/{run_id}"): NOBODY,
    ("POST", "/threads/{thread_id}/runs/{run_id}/cancel"): EVERYONE,
    ("GET", "/threads/{thread_id}/runs/{run_id}/join"): EVERYONE,
    ("GET", "/threads/{thread_id}/runs/{run_id}/stream"): EVERYONE,
    ("GET", "/approvals"): EVERYONE,
    ("GET", "/approvals/{thread_id}"): EVERYONE,
    ("POST", "/approvals/{thread_id}/approve"): DECIDERS,
    ("POST", "/approvals/{thread_id}/reject"): DECIDERS,
    ("POST", "/approvals/{thread_id}/edit"): DECIDERS,
    ("GET", "/threads/{thread_id}/audit"): EVERYONE,
    ("GET", "/audit"): REVIEWERS,
    ("GET", "/audit/verify"): EVERYONE,
    ("GET", "/threads/{thread_id}/trace"): EVERYONE,  # like the thread's audit rows
    ("GET", "/metrics"): ADMINS,  # the tenant's own series; the operator's scraper uses KEEL_METRICS_TOKEN
    ("POST", "/tickets"): STARTERS,
    ("POST", "/fixtures"): ADMINS,
    ("GET", "/dead-letters"): REVIEWERS,
    ("POST", "/dead-letters/{run_id}/retry"): ADMINS,
    ("GET", "/escalations"): REVIEWERS,
    ("GET", "/escalations/{thread_id}"): REVIEWERS,
    ("POST", "/escalations/{thread_id}/take"): REVIEWERS,
    ("POST", "/escalations/{thread_id}/resolve"): REVIEWERS,
    ("POST", "/webhooks"): ADMINS,
    ("GET", "/webhooks"): ADMINS,
    ("GET", "/webhooks/dead-letters"): ADMINS,
    ("GET", "/webhooks/deliveries"): ADMINS,
    ("DELETE", "/webhooks/{subscription_id}"): ADMINS,
}
"""Who may call what (the rest get 403). ``/audit/verify`` is open to every role of the
tenant on purpose: it reveals only whether the chain is intact. Every operation of the
OpenAPI document must be listed here, so a new endpoint forces a decision."""

PUBLIC = {("GET", "/ok"), ("GET", "/info")}
"""Operations without authentication (nothing tenant-specific)."""


def hk(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@dataclass
class World:
    """A served keel: ``tenant`` has threads waiting for approval and finished ones;
    ``other`` is a second tenant with its own keys (the attacker, or the victim)."""

    url: str
    client: httpx.Client
    app: Any
    rt: Any
    tenant: str
    other: str
    keys: dict[str, str]
    other_keys: dict[str, str]
    tickets: dict[str, dict[str, Any]]
    marker: str
    pending: list[tuple[str, str]] = field(default_factory=list)
    """``(thread_id, plan_hash)`` of threads waiting for a decision."""
    done: list[str] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)
    """``(thread_id, run_id)``."""
    checkpoints: list[tuple[str, str]] = field(default_factory=list)
    """``(thread_id, checkpoint_id)``."""

    def h(self, role: str = "admin") -> dict[str, str]:
        return hk(self.keys[role])

    def ticket(self, tid: str = "T-8", **changes: Any) -> dict[str, Any]:
        return {**self.tickets[tid], **changes}

    def start(self, tid: str = "T-8", role: str = "requester", key: str | None = None, **changes: Any) -> dict[str, Any]:
        """POST /tickets with ``wait``; returns the response body."""
        r = self.client.post("/tickets", json={"ticket": self.ticket(tid, **changes), "wait": True},
                             headers=hk(key or self.keys[role]))
        assert r.status_code == 201, r.text
        return r.json()


def plan_hash_of(out: dict[str, Any]) -> str | None:
    intr = (out.get("result") or {}).get("__interrupt__")
    return intr[0]["value"]["plan_hash"] if intr else None


@contextmanager
def served_world(rt: Any, *, rate_per_minute: float = 1e9, max_body_bytes: int = 200_000) -> Iterator[World]:
    """Two tenants with demo back offices and keys, served by uvicorn on a loopback port
    with an embedded worker; ``tenant`` gets three threads waiting for approval (their
    tickets carry a unique marker) and two finished ones."""
    from api.app import create_app

    t, o = new_tenant(), new_tenant()
    load_demo(rt, t)
    load_demo(rt, o)
    pk = rt.principals.create_key
    keys = {r: pk(t, f"{r[:3]}-{t}", r) for r in ROLES}
    keys["requester2"] = pk(t, f"req2-{t}", "requester")
    other_keys = {r: pk(o, f"{r[:3]}-{o}", r) for r in ROLES}
    app = create_app(rt, embedded_worker=True, worker_concurrency=2, rate_per_minute=rate_per_minute,
                     max_body_bytes=max_body_bytes, worker_kwargs={"poll_s": 0.05})
    marker = "victim-marker-" + uuid.uuid4().hex[:12]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        w = World(url=url, client=client, app=app, rt=rt, tenant=t, other=o, keys=keys, other_keys=other_keys,
                  tickets=demo_tickets(t), marker=marker)
        for tid in ("T-8", "T-14", "T-6", "T-1", "T-4"):
            out = w.start(tid, subject=f"{w.tickets[tid]['subject']} {marker}")
            th = out["thread_id"]
            w.runs.append((th, out["run"]["run_id"]))
            h = plan_hash_of(out)
            if h:
                w.pending.append((th, h))
            else:
                w.done.append(th)
            hist = client.post(f"/threads/{th}/history", json={"limit": 20}, headers=w.h()).json()
            w.checkpoints += [(th, s["checkpoint"]["checkpoint_id"]) for s in hist[:3]]
        assert len(w.pending) >= 2 and w.done, (w.pending, w.done)
        yield w


# -- schemathesis --------------------------------------------------------------------------
def fuzz(world: World, *, max_examples: int, seed: int = 0) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """schemathesis (positive data, every operation of the served OpenAPI document), with a
    key of a random role of ``world.tenant`` and, half of the time, ids and plan hashes of
    the tenant's real threads so calls reach past the 404s. Returns the status codes and
    the failures per operation (5xx, undocumented status, content type or body that breaks
    the documented schema)."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings, seed as hseed, strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]
    doc = world.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    cps = dict(world.checkpoints)
    known = [(t, r, cps.get(t)) for t, r in world.runs]  # consistent (thread, run, checkpoint)
    hashes = dict(world.pending)
    roles = [r for r in world.keys]
    session = requests.Session()
    failures: dict[str, list[str]] = {}
    statuses: dict[str, list[int]] = {}
    ops = [r.ok() for r in schema.get_all_operations()]
    ops.sort(key=lambda op: op.method.upper() == "DELETE")  # deletions last: they remove known threads

    for op in ops:

        @hseed(seed)
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed == 0,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=op.as_strategy(), role=st.sampled_from(roles), data=st.data())
        def one(case: Any, role: str, data: Any) -> None:
            params = dict(case.path_parameters or {})
            if params and data.draw(st.booleans()):
                ids = dict(zip(("thread_id", "run_id", "checkpoint_id"), data.draw(st.sampled_from(known))),
                           assistant_id="support")
                params = {k: ids.get(k) or v for k, v in params.items()}
                case.path_parameters = params
            if isinstance(case.query, dict) and "thread_id" in case.query and data.draw(st.booleans()):
                case.query = {**case.query, "thread_id": data.draw(st.sampled_from(known))[0]}
            if isinstance(case.body, dict) and data.draw(st.booleans()):
                body = dict(case.body)
                if "plan_hash" in body and params.get("thread_id") in hashes:
                    body["plan_hash"] = hashes[params["thread_id"]]
                if "assistant_id" in body:
                    body["assistant_id"] = "support"
                    if isinstance(body.get("input"), dict):
                        body["input"] = {"ticket": world.tickets[data.draw(st.sampled_from(sorted(world.tickets)))]}
                if "checkpoint_id" in body:
                    body["checkpoint_id"] = cps.get(params.get("thread_id")) or body["checkpoint_id"]
                if isinstance(body.get("ticket"), dict):
                    body["ticket"] = {**body["ticket"], "tenant": world.tenant}
                if "tenant" in body and "customers" in body:  # fixtures
                    body["tenant"] = world.tenant
                case.body = body
            response = case.call(base_url=world.url, session=session, headers=hk(world.keys[role]), timeout=120)
            statuses.setdefault(op.label, []).append(response.status_code)
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collected and reported
                msg = " | ".join(line for line in str(e).splitlines() if line.strip())[:600]
                failures.setdefault(op.label, []).append(f"[{role}] {response.status_code}: {msg}")

        one()
    return statuses, failures


# -- bodies that must be refused ---------------------------------------------------------------
def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def json_types(doc: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema accepts (empty: any)."""
    schema = resolve(doc, schema)
    out: set[str] = set()
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        sub = json_types(doc, alt)
        if not sub:
            return set()
        out |= sub
    if "type" in schema:
        t = schema["type"]
        out |= set(t) if isinstance(t, list) else {t}
    if "enum" in schema or "const" in schema:
        out.add("string")
    if "integer" in out:
        out.add("number")
    return out


_SAMPLES = {"string": "text", "integer": 7, "number": 7.5, "boolean": True, "object": {"k": 1}, "array": [1],
            "null": None}


def wrong_value(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value of a JSON type the schema does not accept, or ``...`` if it accepts any."""
    allowed = json_types(doc, schema)
    if not allowed:
        return ...
    for t in ("object", "array", "string", "integer", "boolean"):
        if t not in allowed and not (t == "integer" and "number" in allowed):
            return _SAMPLES[t]
    return ...


def body_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    return resolve(doc, content["schema"]) if content else None


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# -- secrets at rest -----------------------------------------------------------------------------
def scan_dir(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """needle → files under ``root`` whose bytes contain it (SQLite databases, their WAL
    and journal files, generated keys: everything the embedded store writes)."""
    hits: dict[str, list[str]] = {}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"nothing written under {root}"
    for p in files:
        data = p.read_bytes()
        for n in needles:
            if n.encode() in data:
                hits.setdefault(n, []).append(str(p.relative_to(root)))
    return hits


def scan_sqlite(path: Path, needles: list[str]) -> dict[str, list[str]]:
    """needle → ``table.column`` of a SQLite database whose value (as bytes) contains it."""
    hits: dict[str, list[str]] = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables, path
        for t in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
            for c in cols:
                for n in needles:
                    q = f'SELECT 1 FROM "{t}" WHERE instr(CAST("{c}" AS BLOB), CAST(? AS BLOB)) > 0 LIMIT 1'
                    if con.execute(q, (n,)).fetchone():
                        hits.setdefault(n, []).append(f"{t}.{c}")
    finally:
        con.close()
    return hits


def scan_postgres(url: str, needles: list[str]) -> dict[str, list[str]]:
    """needle → tables of every user schema of a Postgres database where some row contains
    it, as text or as the hex of a ``bytea`` (the whole row cast to text covers every
    column of every type)."""
    import psycopg
    from psycopg import sql

    hits: dict[str, list[str]] = {}
    with psycopg.connect(url, autocommit=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
        assert tables
        for schema, table in tables:
            ident = sql.Identifier(schema, table)
            for n in needles:
                q = sql.SQL("SELECT 1 FROM {} t WHERE strpos(t::text, %s) > 0 OR strpos(t::text, %s) > 0 LIMIT 1").format(ident)
                if con.execute(q, (n, n.encode().hex())).fetchone():
                    hits.setdefault(n, []).append(f"{schema}.{table}")
    return hits


def audit_rows_text(rt: Any, tenant: str) -> str:
    """Every audit row of ``tenant`` as stored (the raw table, not the API's view)."""
    with rt.db.transaction() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log WHERE tenant = ?", (tenant,))
    assert rows
    return json.dumps(rows, default=str)


PII = {
    "email": "dlp.probe.7731@example.org",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415-555-0199",
}
"""Personal data a ticket and a reviewer's reason carry; DLP must turn them into
``[email]``, ``[card]`` and ``[phone]`` wherever they are logged or audited."""


def pii_leaks(text: str) -> list[str]:
    """Kinds of :data:`PII` whose raw value appears in ``text``."""
    return [k for k, v in PII.items() if v in text]
