"""``keel forget CUSTOMER`` (issue #12 part 7): after real tickets of a customer went through
the API (one executed after approval, one still waiting, one escalated and resolved, one
answered, webhooks delivered), forgetting the customer leaves their name and email in no
column of any table of the database (checkpoint blobs and msgpack bytes included), leaves
another customer's data alone, and the audit chain still verifies, with tampering of live
rows and of tombstones still detected. On the embedded store and on Postgres."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.api_fixtures import api_pg_url  # noqa: F401
from support.api_helpers import demo_fixtures
from support.review_helpers import NOW, Receiver, Tenant, keel_cli as _keel, make_runtime, served, wait_for

from engine.forget import ERASERS, forget
from keel.audit import canonical_json
from tools.fixtures import parse_fixtures_text

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
FAST = {"review_sweep_s": 0.05, "webhook_backoff_base_s": 0.05, "webhook_backoff_cap_s": 0.2}


@pytest.fixture(params=BACKENDS)
def db_url(request):
    return request.getfixturevalue("api_pg_url") if request.param == "postgres" else None


class People:
    """Names and emails no other test (nor the demo data) uses, so a scan of a shared database finds only ours."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name, self.email = f"Benedikt Quorra{tag}", f"bquorra{tag}@example.com"
        self.other_name, self.other_email = f"Jamala Wrighton{tag}", f"jwrighton{tag}@example.com"

    def needles(self) -> list[str]:
        return [self.name, self.email]

    def others(self) -> list[str]:
        return [self.other_name, self.other_email]


def _load(rt: Any, t: Tenant, p: People) -> None:
    raw = demo_fixtures(t.name)
    for c in raw["customers"]:
        if c["id"] == "C-1002":
            c["name"], c["email"] = p.name, p.email
        if c["id"] == "C-1010":
            c["name"], c["email"] = p.other_name, p.other_email
    # a second delivered order of the forgotten customer: a refund of it waits for approval
    raw["orders"].append({**next(o for o in raw["orders"] if o["id"] == "O-5002"), "id": "O-7002"})
    rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(raw)).fixtures)


def _signed(ticket: dict[str, Any], name: str, email: str) -> dict[str, Any]:
    return {**ticket, "body": f"{ticket['body']}\n\nThanks, {name} ({email})"}


def _post(client: Any, t: Tenant, ticket: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/tickets", json={"ticket": ticket, "wait": True}, headers=t.h["requester"])
    assert r.status_code == 201, r.text
    return r.json()


# -- scanning every table ------------------------------------------------------------------------
def _scan_sqlite(data_dir: Path, needles: list[str]) -> set[tuple[str, str, str, str]]:
    hits = set()
    files = sorted(data_dir.rglob("*.db"))
    assert {"keel.db", "checkpoints.db", "store.db"} <= {f.name for f in files}
    for f in files:
        con = sqlite3.connect(f)
        try:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                cur = con.execute(f'SELECT * FROM "{table}"')
                cols = [d[0] for d in cur.description]
                for row in cur:
                    for col, value in zip(cols, row):
                        raw = value if isinstance(value, bytes) else str(value).encode()
                        hits.update((f.name, table, col, n) for n in needles if n.encode() in raw)
        finally:
            con.close()
    return hits


def _scan_postgres(url: str, needles: list[str]) -> set[tuple[str, str, str, str]]:
    hits = set()
    with psycopg.connect(url, autocommit=True) as conn:
        cols = conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {"checkpoint_blobs", "checkpoint_writes", "store", "api_runs", "audit_log"} <= {c[1] for c in cols}
        for schema, table, column, dtype in cols:
            ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            col = sql.Identifier(column)
            for n in needles:
                if dtype == "bytea":
                    q = sql.SQL("SELECT count(*) FROM {} WHERE position(%s::bytea IN {}) > 0").format(ident, col)
                    arg: Any = n.encode()
                else:
                    q = sql.SQL("SELECT count(*) FROM {} WHERE {}::text LIKE %s").format(ident, col)
                    arg = f"%{n}%"
                if conn.execute(q, (arg,)).fetchone()[0]:
                    hits.add(("keel", table, column, n))
    return hits


def _scan(db_url: str | None, data_dir: Path, needles: list[str]) -> set[tuple[str, str, str, str]]:
    return _scan_postgres(db_url, needles) if db_url else _scan_sqlite(data_dir, needles)



# -- the done-when ---------------------------------------------------------------------------------
def test_forget_erases_every_trace_of_the_customer_and_the_audit_chain_still_verifies(
        db_url, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    p = People()
    with Receiver() as rx, served(db_url, data, **FAST) as (client, rt):
        t = Tenant(rt)
        _load(rt, t, p)
        r = client.post("/webhooks", json={"url": rx.url, "events": ["run.awaiting_approval", "run.escalated",
                                                                      "run.completed"]}, headers=t.h["admin"])
        assert r.status_code == 201, r.text
        mine = lambda tid: _signed(t.tickets[tid], p.name, p.email)  # noqa: E731

        executed = _post(client, t, mine("T-8"))  # refund of O-5002: waits, then approved and executed
        assert executed["result"]["status"] == "awaiting_approval"
        plan_hash = executed["result"]["__interrupt__"][0]["value"]["plan_hash"]
        r = client.post(f"/approvals/{executed['thread_id']}/approve", headers=t.h["approver"],
                        json={"plan_hash": plan_hash, "reason": f"ok, refunded {p.name}", "wait": True})
        assert r.status_code == 200, r.text
        waiting = _post(client, t, {**mine("T-8"), "id": "T-8b", "subject": "Refund for O-7002",
                                    "body": mine("T-8")["body"].replace("O-5002", "O-7002")})
        assert waiting["result"]["status"] == "awaiting_approval"
        escalated = _post(client, t, {**mine("T-8"), "id": "T-8c"})  # O-5002 again: already refunded
        assert escalated["result"]["status"] == "escalated"
        r = client.post(f"/escalations/{escalated['thread_id']}/resolve", headers=t.h["approver"],
                        json={"outcome": "declined", "resolution": f"told {p.name} it was refunded already"})
        assert r.status_code == 200, r.text
        answered = _post(client, t, mine("T-10"))  # tracking: a read-only tool executed
        assert answered["result"]["status"] == "completed"
        other = _post(client, t, _signed(t.tickets["T-3"], p.other_name, p.other_email))
        assert other["result"]["status"] == "escalated"
        wait_for(lambda: len(rx.requests) >= 5)
        wait_for(lambda: len(rt.memory.recall(t.name, "C-1002")) >= 4)
        assert rt.memory.recall(t.name, "C-1010")
        other_rows = [r.model_dump() for r in rt.audit.list(t.name, other["thread_id"])]
        before = _scan(db_url, data, p.needles())
        tenant = t.name

    # the test can fail: the customer is all over the database before
    tables = {h[1] for h in before}
    assert {"customers", "api_runs"} <= tables, sorted(tables)
    assert tables & {"checkpoint_blobs", "checkpoints", "writes", "checkpoint_writes"}, sorted(tables)
    assert len(tables) >= 5, sorted(tables)

    env = {"KEEL_DATABASE_URL": db_url or "", "KEEL_DATA_DIR": str(data), "KEEL_NOW": NOW.isoformat(),
           "KEEL_PLAN_SIGNING_KEY": "review-test-key"}
    if db_url is None:
        monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
        env.pop("KEEL_DATABASE_URL")
    code, out, err = _keel(["forget", "C-1002", "--tenant", tenant, "--json"], monkeypatch, env, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["threads"] == 4 and report["audit_chain_ok"] is True
    erased = report["erased"]
    assert set(erased) == set(ERASERS)
    for kind in ("memory_items", "checkpoints", "run_index", "api_threads", "api_runs", "api_run_events",
                 "api_decisions", "escalations", "feedback", "webhook_deliveries", "customer_record",
                 "audit_payloads", "tool_ledger_payloads", "refund_holds"):
        assert erased[kind] > 0, (kind, erased)

    assert _scan(db_url, data, p.needles()) == set()  # the done-when: nothing, anywhere
    assert {h[1] for h in _scan(db_url, data, p.others())} >= {"customers"}  # the other customer is intact

    rt = make_runtime(db_url, data)
    try:
        chain = rt.audit.verify(tenant)
        assert chain.ok, chain
        assert [r.model_dump() for r in rt.audit.list(tenant, other["thread_id"])] == other_rows
        assert rt.memory.recall(tenant, "C-1002") == [] and rt.memory.recall(tenant, "C-1010")
        customer = rt.backoffice.get_customer(tenant, "C-1002")
        assert customer["id"] == "C-1002" and p.name not in json.dumps(customer)
        assert sorted(o["id"] for o in rt.backoffice.list_orders(tenant, "C-1002")) == ["O-5002", "O-5008", "O-7002"]
        assert rt.backoffice.get_order(tenant, "O-5002")["refunded_cents"] == 8999  # the business facts stay
        assert rt.threads.get(executed["thread_id"]) is None and rt.threads.get(other["thread_id"]) is not None
        assert rt.graph().get_state({"configurable": {"thread_id": waiting["thread_id"]}}).values == {}

        again = forget(rt, "C-1002", tenant)  # idempotent: nothing new to erase
        assert again.total == 0 and again.threads == []
        assert rt.audit.verify(tenant).ok

        _tampering_is_still_detected(rt, tenant)
    finally:
        rt.close()


def _tampering_is_still_detected(rt: Any, tenant: str) -> None:
    rows = rt.audit.list(tenant, limit=100_000)
    tomb = next(r for r in rows if set(r.data) == {"_erased", "sha256"})
    live = next(r for r in rows if r.kind == "run_finished" and "_erased" not in r.data)

    def put(seq: int, data: dict[str, Any]) -> None:
        with rt.db.transaction() as tx:
            tx.execute("UPDATE audit_log SET data = ? WHERE tenant = ? AND seq = ?", (canonical_json(data), tenant, seq))

    import hashlib

    for seq, forged, original in (
        (tomb.seq, {**tomb.data, "sha256": "0" * 64}, tomb.data),  # a tombstone's digest changed
        (live.seq, {**live.data, "status": "rejected"}, live.data),  # a live row changed
        # a live row erased behind the log's back, even with its true digest kept
        (live.seq, {"_erased": True, "sha256": hashlib.sha256(canonical_json(live.data).encode()).hexdigest()},
         live.data),
    ):
        put(seq, forged)
        report = rt.audit.verify(tenant)
        assert not report.ok and report.first_bad_seq == seq, (forged, report)
        put(seq, original)
        assert rt.audit.verify(tenant).ok


def test_forget_refuses_an_unknown_customer_with_a_clear_message(tmp_path, monkeypatch, capsys):
    env = {"KEEL_DATA_DIR": str(tmp_path), "KEEL_NOW": NOW.isoformat(), "KEEL_PLAN_SIGNING_KEY": "k"}
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    rt = make_runtime(None, tmp_path)
    rt.ensure_fixtures()
    rt.close()
    code, out, err = _keel(["forget", "C-404", "--tenant", "acme"], monkeypatch, env, capsys)
    assert code == 2 and out == "" and "no customer 'C-404' in tenant 'acme'" in err and "Traceback" not in err


def test_audit_erasure_keeps_digests_records_itself_and_leaves_rows_of_the_first_scheme(tmp_path):
    import hashlib

    from guards.dlp import redact
    from keel.audit import GENESIS, AuditLog
    from keel.db import open_database

    db = open_database(f"sqlite:///{tmp_path / 'a.db'}")
    log = AuditLog(db, redact=redact)
    log.setup()
    # a row hashed by the first scheme (its data itself), as databases written before digests hold
    body = {"seq": 1, "tenant": "t", "thread_id": "old", "kind": "admin", "actor": "system",
            "at": "2026-01-01T00:00:00Z", "correlation_id": None, "data": {"note": "Old Name"}}
    h = hashlib.sha256((GENESIS + canonical_json(body)).encode()).hexdigest()
    with db.transaction() as tx:
        tx.execute("INSERT INTO audit_head (tenant, seq, row_hash) VALUES ('t', 1, ?)", (h,))
        tx.execute("INSERT INTO audit_log (tenant, seq, thread_id, kind, actor, at, correlation_id, data, prev_hash,"
                   " row_hash) VALUES ('t', 1, 'old', 'admin', 'system', ?, NULL, ?, ?, ?)",
                   (body["at"], canonical_json(body["data"]), GENESIS, h))
    for i in range(3):
        log.append("t", "run_finished", actor="system", data={"who": f"Some Name {i}"}, thread_id=f"th-{i}")
    assert log.verify("t").ok

    record = log.erase_payloads("t", [1, 2, 3], actor="system:forget", note={"customer_id": "C-1"})
    assert record is not None and record.kind == "admin" and record.seq == 5
    assert record.data == {"customer_id": "C-1", "action": "erase_payloads", "erased_seqs": [2, 3], "kept_seqs": [1]}
    rows = {r.seq: r for r in log.list("t")}
    assert rows[2].data == {"_erased": True, "sha256": hashlib.sha256(canonical_json({"who": "Some Name 0"}).encode())
                            .hexdigest()}
    assert rows[1].data == {"note": "Old Name"} and rows[4].data == {"who": "Some Name 2"}
    assert log.verify("t").ok
    again = log.erase_payloads("t", [2, 3], actor="system:forget")
    assert again is not None and again.data["erased_seqs"] == [] and log.verify("t").ok
    # an erasure record cannot itself be erased (it is what makes the tombstones legitimate)
    assert log.erase_payloads("t", [5], actor="x").data["erased_seqs"] == [] and log.verify("t").ok
    # a genuine payload shaped like a tombstone is not mistaken for one
    log.append("t", "admin", actor="system", data={"_erased": True, "sha256": "a" * 64})
    assert log.verify("t").ok
    db.close()
