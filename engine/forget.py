"""``keel forget CUSTOMER``: erase what keel holds about one customer of one tenant.

What goes: the customer's long-term memory (:mod:`engine.memory`); every thread that
served one of the customer's tickets, everywhere a thread leaves rows (the run index, the
checkpoints with their writes and blobs, the API's threads, runs, stream events and
decisions, spans, approval deadlines, escalations, feedback, refund holds, webhook
deliveries, run recordings), cached tool reads naming the customer; the payloads of the tool ledger's rows those threads wrote
(the rows stay, so an idempotency key is never reused); the back-office customer record's
personal data (ids stay: name, email, shipping addresses, reset emails and free-text
reasons are overwritten); and the payloads of the audit rows about the customer, replaced
by tombstones that keep each payload's digest, so the hash chain still verifies
(:meth:`keel.audit.AuditLog.erase_payloads`, which also appends the erasure's own record).

Erasers form a registry (:data:`ERASERS`, :func:`eraser`): one function per kind of row,
run in order, each skipping a table this database does not have; a module that adds a
table holding a thread's data registers its eraser here. Forgetting is idempotent: a
second forget of the same customer erases nothing new (its counts are zero).

Which threads are the customer's is read *before* anything is erased, from every place that
names the customer: each thread's checkpointed ticket, the API's queued inputs, feedback
examples, refund holds and memory items.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.retention import checkpoint_rows
from engine.runtime import Runtime
from keel.errors import InvalidInput
from keel.plan import idempotency_key

__all__ = ["ERASERS", "ERASED", "ForgetScope", "ForgetReport", "Eraser", "eraser", "forget", "find_threads"]

log = logging.getLogger("keel.forget")

ERASED = "[erased]"
"""What an erased text field holds afterwards."""

_CHUNK = 400


@dataclass(frozen=True)
class ForgetScope:
    """Everything an eraser needs to know, gathered before any eraser runs."""

    tenant: str
    customer_id: str
    threads: tuple[str, ...]
    """The customer's threads."""
    run_ids: tuple[str, ...]
    """The API runs of those threads."""
    ledger_keys: tuple[str, ...]
    """Idempotency keys of tool calls those threads made."""


Eraser = Callable[[Runtime, ForgetScope], int]
"""Erases one kind of row for a scope; returns how many rows it deleted or overwrote."""

ERASERS: dict[str, Eraser] = {}
"""Kind → eraser, in the order they run (the audit log's last: erasers before it may read it)."""


def eraser(kind: str) -> Callable[[Eraser], Eraser]:
    """Register ``fn`` as the eraser of ``kind`` (a later registration of a kind replaces it)."""

    def add(fn: Eraser) -> Eraser:
        ERASERS[kind] = fn
        if "audit_payloads" in ERASERS and kind != "audit_payloads":  # keep the audit log last
            ERASERS["audit_payloads"] = ERASERS.pop("audit_payloads")
        return fn

    return add


@dataclass
class ForgetReport:
    """What a forget erased, by kind."""

    tenant: str
    customer_id: str
    threads: list[str] = field(default_factory=list)
    erased: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows erased in all."""
        return sum(self.erased.values())

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object."""
        return {"tenant": self.tenant, "customer_id": self.customer_id, "threads": len(self.threads),
                "erased": self.erased, "total": self.total}

    def lines(self) -> list[str]:
        """A human-readable summary."""
        out = [f"forgot customer {self.customer_id} of tenant {self.tenant}: {len(self.threads)} threads, "
               f"{self.total} rows erased"]
        out += [f"  {kind}: {n}" for kind, n in self.erased.items() if n]
        if not self.total:
            out.append("  nothing left to erase")
        return out


# -- SQL helpers ---------------------------------------------------------------------------------
def _exists(rt: Runtime, table: str) -> bool:
    sql = ("SELECT to_regclass(?) IS NOT NULL AS ok" if rt.db.is_postgres
           else "SELECT count(*) > 0 AS ok FROM sqlite_master WHERE type = 'table' AND name = ?")
    with rt.db.transaction() as tx:
        return bool((tx.fetchone(sql, (table,)) or {}).get("ok"))


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i:i + _CHUNK])


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _delete_where_in(rt: Runtime, table: str, column: str, ids: Sequence[str], tenant: str | None = None) -> int:
    """``DELETE FROM table WHERE column IN ids`` (and ``tenant = ?``), chunked; 0 if no such table."""
    if not ids or not _exists(rt, table):
        return 0
    n = 0
    for chunk in _chunks(ids):
        sql = f"DELETE FROM {table} WHERE {column} IN ({_marks(len(chunk))})"
        params: list[Any] = list(chunk)
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        with rt.db.transaction() as tx:
            n += tx.execute(sql, params)
    return n


def _thread_rows(table: str, column: str = "thread_id", *, tenant: bool = True) -> Eraser:
    """An eraser deleting ``table``'s rows of the scope's threads."""

    def erase(rt: Runtime, scope: ForgetScope) -> int:
        return _delete_where_in(rt, table, column, scope.threads, scope.tenant if tenant else None)

    erase.__name__ = f"erase_{table}"
    return erase


# -- which threads are the customer's ----------------------------------------------------------------
def _customer_of_ticket(ticket: Any) -> str | None:
    if ticket is None:
        return None
    if isinstance(ticket, dict):
        value = ticket.get("customer_id")
    else:
        value = getattr(ticket, "customer_id", None)
    return str(value) if value is not None else None


def _tenant_threads(rt: Runtime, tenant: str) -> list[str]:
    ids: set[str] = set()
    for table in ("run_index", "api_threads"):
        if _exists(rt, table):
            with rt.db.transaction() as tx:
                ids.update(r["thread_id"] for r in tx.fetchall(f"SELECT thread_id FROM {table} WHERE tenant = ?",
                                                               (tenant,)))
    return sorted(ids)


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str | bytes) else text
    except ValueError:
        return None


def find_threads(rt: Runtime, tenant: str, customer_id: str) -> tuple[set[str], set[tuple[str, str, int]]]:
    """The customer's threads, and ``(thread, plan hash, actions)`` of the plans read on the way."""
    threads: set[str] = set()
    plans: set[tuple[str, str, int]] = set()
    graph = rt.graph("support")
    for tid in _tenant_threads(rt, tenant):
        try:
            values = graph.get_state({"configurable": {"thread_id": tid}}).values or {}
        except Exception:  # a thread of another graph, or a checkpoint this graph cannot read
            log.debug("forget: state of thread %s unreadable", tid, exc_info=True)
            continue
        ticket = values.get("ticket")
        tenant_of = ticket.get("tenant") if isinstance(ticket, dict) else getattr(ticket, "tenant", None)
        if _customer_of_ticket(ticket) == customer_id and tenant_of == tenant:
            threads.add(tid)
            plan = values.get("plan")
            if plan is not None:
                p = plan if isinstance(plan, dict) else plan.model_dump(mode="json")
                plans.add((tid, str(p.get("hash")), len((p.get("plan") or {}).get("actions") or [])))
    if _exists(rt, "api_runs"):  # queued inputs of runs whose thread has no checkpoint yet
        with rt.db.transaction() as tx:
            rows = tx.fetchall("SELECT thread_id, payload FROM api_runs WHERE tenant = ? AND payload LIKE ?",
                               (tenant, f"%{customer_id}%"))
        for r in rows:
            ticket = ((_json(r["payload"]) or {}).get("input") or {}).get("ticket")
            if _customer_of_ticket(ticket) == customer_id:
                threads.add(r["thread_id"])
    for table, column in (("feedback", "ticket"),):
        if _exists(rt, table):
            with rt.db.transaction() as tx:
                rows = tx.fetchall(f"SELECT thread_id, {column} FROM {table} WHERE tenant = ?", (tenant,))
            threads.update(r["thread_id"] for r in rows if _customer_of_ticket(_json(r[column])) == customer_id)
    if _exists(rt, "refund_holds"):
        with rt.db.transaction() as tx:
            rows = tx.fetchall("SELECT thread_id FROM refund_holds WHERE tenant = ? AND customer_id = ?",
                               (tenant, customer_id))
        threads.update(r["thread_id"] for r in rows)
    threads.update(item.thread_id for item in rt.memory.recall(tenant, customer_id) if item.thread_id)
    return threads, plans


def _scope(rt: Runtime, tenant: str, customer_id: str) -> ForgetScope:
    threads, plans = find_threads(rt, tenant, customer_id)
    ordered = sorted(threads)
    run_ids: list[str] = []
    if ordered and _exists(rt, "api_runs"):
        for chunk in _chunks(ordered):
            with rt.db.transaction() as tx:
                run_ids += [r["run_id"] for r in tx.fetchall(
                    f"SELECT run_id FROM api_runs WHERE thread_id IN ({_marks(len(chunk))})", chunk)]
    keys = {idempotency_key(tid, h, i) for tid, h, n in plans for i in range(n)}
    for tid in ordered:  # every key a tool call of the thread was audited with (plans edited or replaced)
        for row in rt.audit.list(tenant, tid, limit=100_000):
            key = row.data.get("idempotency_key") if isinstance(row.data, dict) else None
            if isinstance(key, str):
                keys.add(key)
    return ForgetScope(tenant=tenant, customer_id=customer_id, threads=tuple(ordered), run_ids=tuple(sorted(run_ids)),
                       ledger_keys=tuple(sorted(keys)))


# -- the erasers -------------------------------------------------------------------------------------
@eraser("memory_items")
def _memory(rt: Runtime, scope: ForgetScope) -> int:
    sweep = getattr(rt.store, "sweep_ttl", None)
    if callable(sweep):
        sweep()  # expired items are hidden from reads but still stored until swept
    return rt.memory.forget(scope.tenant, scope.customer_id)


@eraser("checkpoints")
def _checkpoints(rt: Runtime, scope: ForgetScope) -> int:
    if not scope.threads:
        return 0
    before = sum(checkpoint_rows(rt, scope.threads).values())
    saver = rt.checkpointer
    for tid in scope.threads:
        saver.delete_thread(tid)  # checkpoints, their writes and (Postgres) blobs
    return before - sum(checkpoint_rows(rt, scope.threads).values())


@eraser("api_run_events")
def _run_events(rt: Runtime, scope: ForgetScope) -> int:
    return _delete_where_in(rt, "api_run_events", "run_id", scope.run_ids)


@eraser("spans")
def _spans(rt: Runtime, scope: ForgetScope) -> int:
    return (_delete_where_in(rt, "keel_spans", "thread_id", scope.threads)
            + _delete_where_in(rt, "keel_spans", "run_id", scope.run_ids))


@eraser("webhook_deliveries")
def _webhooks(rt: Runtime, scope: ForgetScope) -> int:
    if not scope.threads or not _exists(rt, "webhook_deliveries"):
        return 0
    ids: set[str] = set()
    with rt.db.transaction() as tx:
        for tid in scope.threads:
            ids.update(r["id"] for r in tx.fetchall("SELECT id FROM webhook_deliveries WHERE tenant = ? AND body LIKE ?",
                                                    (scope.tenant, f"%{tid}%")))
    return _delete_where_in(rt, "webhook_attempts", "delivery_id", sorted(ids)) + \
        _delete_where_in(rt, "webhook_deliveries", "id", sorted(ids))


@eraser("tool_ledger_payloads")
def _ledger(rt: Runtime, scope: ForgetScope) -> int:
    """The rows stay (the key must never act twice); their results keep only ok/error code."""
    if not scope.ledger_keys:
        return 0
    n = 0
    for chunk in _chunks(scope.ledger_keys):
        with rt.db.transaction() as tx:
            rows = tx.fetchall(f"SELECT idempotency_key, result_json FROM tool_ledger WHERE tenant = ? AND "
                               f"idempotency_key IN ({_marks(len(chunk))})", [scope.tenant, *chunk])
            for r in rows:
                old = _json(r["result_json"]) or {}
                new = {"ok": bool(old.get("ok")), "output": {"erased": True}, "error_code": old.get("error_code"),
                       "error": None}
                if old != new:
                    n += tx.execute("UPDATE tool_ledger SET result_json = ? WHERE idempotency_key = ?",
                                    (json.dumps(new), r["idempotency_key"]))
    return n


for _table in ("run_index", "api_threads", "api_runs", "api_decisions", "approval_deadlines", "escalations",
               "feedback", "refund_holds", "run_recordings", "release_runs", "release_shadow"):
    eraser(_table)(_thread_rows(_table))


@eraser("tool_cache")
def _tool_cache(rt: Runtime, scope: ForgetScope) -> int:
    """Cached read results naming the customer (a cache: dropping an entry costs one re-read)."""
    if not _exists(rt, "tool_cache"):
        return 0
    with rt.db.transaction() as tx:
        return tx.execute("DELETE FROM tool_cache WHERE tenant = ? AND output LIKE ?",
                          (scope.tenant, f'%"{scope.customer_id}"%'))


@eraser("customer_record")
def _backoffice(rt: Runtime, scope: ForgetScope) -> int:
    """Anonymise the back office: ids, amounts and statuses stay; personal data goes."""
    t, c = scope.tenant, scope.customer_id
    updates = (
        ("UPDATE customers SET name = ?, email = ? WHERE tenant = ? AND id = ? AND (name <> ? OR email <> ?)",
         (ERASED, ERASED, t, c, ERASED, ERASED)),
        ("UPDATE orders SET shipping_address = ? WHERE tenant = ? AND customer_id = ? AND shipping_address <> ?",
         (ERASED, t, c, ERASED)),
        ("UPDATE password_resets SET email = ? WHERE tenant = ? AND customer_id = ? AND email <> ?", (ERASED, t, c, ERASED)),
        ("UPDATE refunds SET reason = NULL WHERE tenant = ? AND customer_id = ? AND reason IS NOT NULL", (t, c)),
        ("UPDATE reships SET reason = NULL WHERE tenant = ? AND customer_id = ? AND reason IS NOT NULL", (t, c)),
    )
    n = 0
    with rt.db.transaction() as tx:
        for sql, params in updates:
            n += tx.execute(sql, params)
    return n


@eraser("audit_payloads")
def _audit(rt: Runtime, scope: ForgetScope) -> int:
    """Tombstone the payloads of the threads' rows and of rows naming the customer; digests stay."""
    seqs: set[int] = set()
    with rt.db.transaction() as tx:
        for chunk in _chunks(scope.threads):
            seqs.update(r["seq"] for r in tx.fetchall(
                f"SELECT seq FROM audit_log WHERE tenant = ? AND thread_id IN ({_marks(len(chunk))})",
                [scope.tenant, *chunk]))
        seqs.update(r["seq"] for r in tx.fetchall("SELECT seq FROM audit_log WHERE tenant = ? AND data LIKE ?",
                                                  (scope.tenant, f'%"{scope.customer_id}"%')))
    record = rt.audit.erase_payloads(scope.tenant, seqs, actor="system:forget",
                                     note={"customer_id": scope.customer_id, "threads": len(scope.threads)})
    if record is None:
        return 0
    if record.data.get("kept_seqs"):
        log.warning("forget: %d audit rows of tenant %s predate payload digests and keep their payload: %s",
                    len(record.data["kept_seqs"]), scope.tenant, record.data["kept_seqs"][:20])
    return len(record.data["erased_seqs"])


# -- the command's engine --------------------------------------------------------------------------
def forget(rt: Runtime, customer_id: str, tenant: str) -> ForgetReport:
    """Erase the customer's data (see the module docstring); raises :class:`InvalidInput` for an
    unknown customer."""
    if not customer_id.strip() or not tenant.strip():
        raise InvalidInput("a customer id and a tenant are required")
    with rt.db.transaction() as tx:
        known = tx.fetchone("SELECT id FROM customers WHERE tenant = ? AND id = ?", (tenant, customer_id))
    if known is None:
        raise InvalidInput(f"no customer {customer_id!r} in tenant {tenant!r}")
    scope = _scope(rt, tenant, customer_id)
    report = ForgetReport(tenant=tenant, customer_id=customer_id, threads=list(scope.threads))
    for kind, erase in ERASERS.items():
        report.erased[kind] = erase(rt, scope)
    log.info("forgot customer %s of tenant %s: %s", customer_id, tenant, report.as_json())
    return report
