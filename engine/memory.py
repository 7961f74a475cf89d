"""Long-term memory per customer, governed: the third of a run's three kinds of state.

keel keeps them apart in code:

- **session context**: the run's own state (``graphs.state.SupportState``), gone with the run;
- **task state**: the checkpoints (``engine.checkpoints``), what resumes a paused run;
- **long-term memory**: this module, what keel remembers about a customer *across* runs.

Memory lives in LangGraph's store (``SqliteStore`` / ``PostgresStore``, :mod:`engine.store`)
under the namespace ``(tenant, "memory", customer_id)``. Nothing is written unless the rule
of :mod:`guards.memory_policy` accepts the proposal (allowed data class, never-store screen);
every proposal, accepted or rejected, leaves one ``memory_write`` audit row holding its class,
decision, reasons and digest, never its content. Each item expires after its class's
retention: the store's TTL drops it (wall clock), its ``expires_at`` (run clock) hides it
from reads, and :meth:`CustomerMemory.prune` deletes what has expired.

Writes are idempotent per run: an item's key is ``thread_id:class:slot``, and a proposal whose
digest the thread's audit rows already record is not audited again, so a node LangGraph
re-runs on resume writes the same item once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langgraph.store.base import BaseStore

from engine.store import TenantStore
from graphs.context import AuditTrail, Clock
from guards.memory_policy import MemoryPolicy, MemoryProposal, MemoryVerdict, judge

__all__ = ["CustomerMemory", "MemoryItem", "NAMESPACE"]

NAMESPACE = "memory"
"""First label (after the tenant's) of every memory namespace."""

_PAGE = 100


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One remembered item of a customer."""

    key: str
    data_class: str
    slot: str
    value: dict[str, Any]
    thread_id: str
    """The run that proposed it."""
    recorded_at: datetime
    expires_at: datetime


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class CustomerMemory:
    """Read, write (through the rule), prune and erase customers' long-term memory.

    ``store`` is LangGraph's store for all tenants (each call scopes it to one tenant with
    :class:`~engine.store.TenantStore`); ``policy`` is the pack's ``[memory]`` (None: keep
    nothing); ``clock`` is the run clock that ``expires_at`` is measured on.
    """

    def __init__(self, store: BaseStore, audit: AuditTrail, policy: MemoryPolicy | None, clock: Clock) -> None:
        self.store = store
        self.audit = audit
        self.policy = policy
        self.clock = clock

    def _view(self, tenant: str) -> TenantStore:
        return TenantStore(self.store, tenant)

    @staticmethod
    def namespace(customer_id: str) -> tuple[str, str]:
        """The customer's namespace inside its tenant's tree."""
        return (NAMESPACE, customer_id)

    # -- write -----------------------------------------------------------------------------
    def propose(self, tenant: str, customer_id: str, thread_id: str, proposals: Sequence[MemoryProposal], *,
                correlation_id: str | None = None, now: datetime | None = None) -> list[MemoryVerdict]:
        """Judge each proposal; store the accepted ones; audit every decision once per thread."""
        now = now or self.clock()
        view = self._view(tenant)
        seen = {r.data.get("digest") for r in self.audit.list(tenant, thread_id) if r.kind == "memory_write"}
        verdicts = []
        for p in proposals:
            verdict = judge(p, self.policy, now)
            verdicts.append(verdict)
            if verdict.accepted:
                assert verdict.expires_at is not None and self.policy is not None
                minutes = max(1.0, math.ceil(self.policy.retention(p.data_class).total_seconds() / 60))
                view.put(self.namespace(customer_id), f"{thread_id}:{p.data_class}:{p.slot}",
                         {"data_class": p.data_class, "slot": p.slot, "value": p.value, "thread_id": thread_id,
                          "recorded_at": _iso(now), "expires_at": _iso(verdict.expires_at), "digest": verdict.digest},
                         index=False, ttl=minutes)
            if verdict.digest in seen:
                continue  # this run already recorded this decision (a re-run after a resume)
            seen.add(verdict.digest)
            self.audit.append(tenant, "memory_write", actor="system", thread_id=thread_id,
                              correlation_id=correlation_id,
                              data={"decision": "accepted" if verdict.accepted else "rejected",
                                    "data_class": p.data_class, "slot": p.slot, "digest": verdict.digest,
                                    "reasons": list(verdict.reasons),
                                    "expires_at": _iso(verdict.expires_at) if verdict.expires_at else None})
        return verdicts

    # -- read --------------------------------------------------------------------------------
    def _all(self, tenant: str, customer_id: str) -> list[Any]:
        view, out, offset = self._view(tenant), [], 0
        while True:
            page = view.search(self.namespace(customer_id), limit=_PAGE, offset=offset, refresh_ttl=False)
            out.extend(page)
            if len(page) < _PAGE:
                return out
            offset += _PAGE

    def recall(self, tenant: str, customer_id: str, now: datetime | None = None) -> list[MemoryItem]:
        """The customer's unexpired items, oldest first (reading does not extend a retention)."""
        now = now or self.clock()
        items = []
        for it in self._all(tenant, customer_id):
            v = it.value
            try:
                expires = _parse(v["expires_at"])
                item = MemoryItem(key=it.key, data_class=v["data_class"], slot=v["slot"], value=dict(v["value"]),
                                  thread_id=v["thread_id"], recorded_at=_parse(v["recorded_at"]), expires_at=expires)
            except (KeyError, TypeError, ValueError):
                continue  # not an item this module wrote
            if expires > now and (self.policy is None or self.policy.allows(item.data_class)):
                items.append(item)
        return sorted(items, key=lambda i: (i.recorded_at, i.key))

    # -- retention and erasure ----------------------------------------------------------------
    def prune(self, tenant: str, now: datetime | None = None) -> int:
        """Delete the tenant's expired items (and those of classes the pack no longer allows)."""
        now = now or self.clock()
        view, removed = self._view(tenant), 0
        for ns in view.list_namespaces(prefix=(NAMESPACE,), limit=100_000):
            for it in self._all(tenant, ns[1]) if len(ns) == 2 else ():
                v = it.value if isinstance(it.value, dict) else {}
                try:
                    expired = _parse(str(v["expires_at"])) <= now
                except (KeyError, ValueError):
                    expired = True
                if expired or (self.policy is not None and not self.policy.allows(str(v.get("data_class")))):
                    view.delete(it.namespace, it.key)
                    removed += 1
        return removed

    def forget(self, tenant: str, customer_id: str) -> int:
        """Delete every item of the customer (expired or not); returns how many."""
        view, removed = self._view(tenant), 0
        for it in self._all(tenant, customer_id):
            view.delete(it.namespace, it.key)
            removed += 1
        return removed
