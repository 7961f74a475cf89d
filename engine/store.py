"""LangGraph's long-term store on keel's database, one namespace tree per tenant.

The store is LangGraph's own: ``SqliteStore`` next to the checkpoints on the embedded
default, ``PostgresStore`` on keel's pool on Postgres (both with TTL). Graphs are
compiled with it, so nodes reach it as ``runtime.store`` (LangGraph's ``Runtime``), and
the API's ``/store`` routes read and write the same items.

Tenants never share items: :class:`TenantStore` puts the tenant as the first label of
every namespace it writes or reads and takes it off what it returns, so a caller (an API
key, or a node of a run) sees only its tenant's tree and cannot name another's. The API
binds it to the caller's tenant; graphs get one bound to the tenant of the run it is
serving (from the run's config, which only keel's worker sets).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from langgraph.config import get_config
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from keel.db import Database
from keel.errors import ConfigError

__all__ = ["open_store", "TenantStore", "NoTenant", "TTL_CONFIG"]

TTL_CONFIG = {"refresh_on_read": True, "default_ttl": None, "sweep_interval_minutes": None, "omit_expired": True}
"""Items live until deleted unless written with a ``ttl`` (minutes); reads refresh it."""

_SWEEP_EVERY_S = 0.5
"""SQLite: expired items are swept before a read at most this often (so visible at most this long)."""
_LAST_SWEEP: dict[int, float] = {}
_SWEEP_LOCK = threading.Lock()


class NoTenant(ConfigError, RuntimeError):
    """The store was used outside a keel run, where no tenant is known."""


def open_store(db: Database, data_dir: Path) -> BaseStore:
    """LangGraph's store on ``db`` (``setup()`` is the caller's, under its set-up lock)."""
    if db.is_postgres:
        from langgraph.store.postgres import PostgresStore

        return PostgresStore(db.pool, ttl=TTL_CONFIG)  # type: ignore[arg-type]
    from langgraph.store.sqlite import SqliteStore

    path = (data_dir / "store.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return SqliteStore(conn, ttl=TTL_CONFIG)


class TenantStore(BaseStore):
    """A view of ``base`` holding only ``tenant``'s items (``tenant=None``: the tenant of the
    keel run the calling node serves)."""

    supports_ttl = True  # keel's stores (SqliteStore, PostgresStore) keep TTLs

    def __init__(self, base: BaseStore, tenant: str | None = None) -> None:
        self.base = base
        self.ttl_config = getattr(base, "ttl_config", None)
        self._tenant = tenant

    def tenant(self) -> str:
        """The tenant whose tree this view shows."""
        if self._tenant is not None:
            return self._tenant
        try:
            tenant = (get_config().get("metadata") or {}).get("tenant")
        except RuntimeError:
            tenant = None
        if not isinstance(tenant, str) or not tenant:
            raise NoTenant("the store is per tenant: use it from a keel run (or bind a tenant)")
        return tenant

    # SQLite keeps expired items until a sweep; Postgres hides them at read already
    def _sweep(self) -> None:
        from langgraph.store.sqlite import SqliteStore  # by type, not by name (keel.errors)

        if not isinstance(self.base, SqliteStore):
            return
        now = time.monotonic()
        with _SWEEP_LOCK:  # per store, however many views (one per API request) use it
            if now - _LAST_SWEEP.get(id(self.base), 0.0) < _SWEEP_EVERY_S:
                return
            _LAST_SWEEP[id(self.base)] = now
        self.base.sweep_ttl()

    def _ops(self, ops: Iterable[Op], t: str) -> list[Op]:
        out: list[Op] = []
        for op in ops:
            if isinstance(op, GetOp):
                out.append(op._replace(namespace=(t, *op.namespace)))
            elif isinstance(op, PutOp):
                out.append(op._replace(namespace=(t, *op.namespace)))
            elif isinstance(op, SearchOp):
                out.append(op._replace(namespace_prefix=(t, *op.namespace_prefix)))
            elif isinstance(op, ListNamespacesOp):
                conds = [c._replace(path=(t, *c.path)) if c.match_type == "prefix" else c
                         for c in op.match_conditions or ()]
                if not any(c.match_type == "prefix" for c in conds):
                    conds.insert(0, MatchCondition(match_type="prefix", path=(t,)))
                depth = op.max_depth + 1 if op.max_depth is not None else None
                out.append(op._replace(match_conditions=tuple(conds), max_depth=depth))
            else:
                raise TypeError(f"unknown store operation {type(op).__name__}")
        return out

    @staticmethod
    def _strip_item(item: Item | SearchItem | None) -> Any:
        if item is None:
            return None
        ns = tuple(item.namespace[1:])
        if isinstance(item, SearchItem):
            return SearchItem(namespace=ns, key=item.key, value=item.value, created_at=item.created_at,
                              updated_at=item.updated_at, score=item.score)
        return Item(namespace=ns, key=item.key, value=item.value, created_at=item.created_at,
                    updated_at=item.updated_at)

    def _results(self, ops: list[Op], results: list[Result], t: str) -> list[Result]:
        out: list[Result] = []
        for op, res in zip(ops, results):
            if isinstance(op, GetOp):
                out.append(self._strip_item(res))  # type: ignore[arg-type]
            elif isinstance(op, SearchOp):
                out.append([self._strip_item(i) for i in res or []])  # type: ignore[union-attr]
            elif isinstance(op, ListNamespacesOp):
                out.append([tuple(ns[1:]) for ns in res or [] if ns and ns[0] == t])  # type: ignore[union-attr]
            else:
                out.append(res)
        return out

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        t = self.tenant()
        ops = list(ops)
        if any(not isinstance(op, PutOp) for op in ops):
            self._sweep()
        return self._results(ops, self.base.batch(self._ops(ops, t)), t)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        # keel's stores are synchronous (SqliteStore, PostgresStore on a sync pool)
        return self.batch(ops)
