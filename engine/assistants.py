"""Assistants a tenant creates (LangGraph Server's ``/assistants``): a graph with its own
``config``, ``context``, metadata and name, versioned.

Every change (create, patch) writes a new immutable version; the assistant points at its
current one, and ``set_latest`` moves it back (or forward) to any version. A run records
the assistant and version it ran under (how a team versions a workflow's configuration:
model routing, prompt versions, policy settings). The graphs' default assistants (one per
graph, ``created_by: system``) are not stored here: they are read-only and shared.
Assistants belong to one tenant; another tenant's are invisible.
"""

from __future__ import annotations

import json
from typing import Any

from engine.queue.base import dumps, iso_now, new_id
from keel.db import Database, IntegrityError
from keel.errors import StoreError

__all__ = ["AssistantStore", "AssistantExists", "SORT_COLUMNS"]

_DDL = """
CREATE TABLE IF NOT EXISTS api_assistants (
  assistant_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  graph_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  name TEXT NOT NULL,
  description TEXT,
  config TEXT NOT NULL,
  context TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_assistants_tenant ON api_assistants (tenant, created_at);
CREATE TABLE IF NOT EXISTS api_assistant_versions (
  assistant_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  graph_id TEXT NOT NULL,
  name TEXT NOT NULL,
  description TEXT,
  config TEXT NOT NULL,
  context TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (assistant_id, version)
)
"""

SORT_COLUMNS = ("assistant_id", "graph_id", "name", "created_at", "updated_at")
_VERSIONED = ("graph_id", "name", "description", "config", "context", "metadata")


class AssistantExists(StoreError):
    """An assistant with that id exists (in some tenant: ids leak nothing)."""

    code = "assistant_exists"


def _row(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out = dict(r)
    for c in ("config", "context", "metadata"):
        out[c] = json.loads(out[c])
    return out


class AssistantStore:
    """Tenants' assistants and their versions."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.executescript(_DDL)

    def get(self, tenant: str, assistant_id: str) -> dict[str, Any] | None:
        """The tenant's assistant at its current version (another tenant's is None)."""
        return _row(self.db.fetchone("SELECT * FROM api_assistants WHERE assistant_id = ? AND tenant = ?",
                                     (assistant_id, tenant)))

    def create(self, tenant: str, created_by: str, *, graph_id: str, assistant_id: str | None = None,
               name: str | None = None, description: str | None = None, config: dict[str, Any] | None = None,
               context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new assistant at version 1 (``AssistantExists`` if the id is taken)."""
        aid, now = assistant_id or new_id(), iso_now()
        values = {"graph_id": graph_id, "name": name or "Untitled", "description": description,
                  "config": config or {}, "context": context or {}, "metadata": metadata or {}}
        try:
            with self.db.transaction() as tx:
                tx.execute(
                    "INSERT INTO api_assistants (assistant_id, tenant, graph_id, version, name, description, config,"
                    " context, metadata, created_at, updated_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                    (aid, tenant, graph_id, values["name"], description, dumps(values["config"]),
                     dumps(values["context"]), dumps(values["metadata"]), now, now),
                )
                self._version(tx, aid, 1, tenant, created_by, values, now)
        except IntegrityError:
            raise AssistantExists(aid) from None
        return self.get(tenant, aid)  # type: ignore[return-value]

    @staticmethod
    def _version(tx: Any, aid: str, version: int, tenant: str, created_by: str, v: dict[str, Any], now: str) -> None:
        tx.execute(
            "INSERT INTO api_assistant_versions (assistant_id, version, tenant, graph_id, name, description, config,"
            " context, metadata, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (aid, version, tenant, v["graph_id"], v["name"], v["description"], dumps(v["config"]), dumps(v["context"]),
             dumps(v["metadata"]), created_by, now),
        )

    def _point(self, tx: Any, aid: str, v: dict[str, Any], version: int, now: str) -> None:
        tx.execute(
            "UPDATE api_assistants SET graph_id = ?, version = ?, name = ?, description = ?, config = ?, context = ?,"
            " metadata = ?, updated_at = ? WHERE assistant_id = ?",
            (v["graph_id"], version, v["name"], v["description"], dumps(v["config"]), dumps(v["context"]),
             dumps(v["metadata"]), now, aid),
        )

    def patch(self, tenant: str, assistant_id: str, created_by: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """A new version from the current one with ``changes`` (metadata merged, the rest
        replaced); it becomes the current version. None if the tenant has no such assistant."""
        now = iso_now()
        for_update = " FOR UPDATE" if self.db.is_postgres else ""
        with self.db.transaction() as tx:
            cur = _row(tx.fetchone(f"SELECT * FROM api_assistants WHERE assistant_id = ? AND tenant = ?{for_update}",
                                   (assistant_id, tenant)))
            if cur is None:
                return None
            top = tx.fetchone("SELECT MAX(version) AS v FROM api_assistant_versions WHERE assistant_id = ?",
                              (assistant_id,))
            version = int(top["v"]) + 1  # type: ignore[index]
            v = {k: cur[k] for k in _VERSIONED}
            for k, val in changes.items():
                v[k] = {**cur["metadata"], **val} if k == "metadata" else val
            self._version(tx, assistant_id, version, tenant, created_by, v, now)
            self._point(tx, assistant_id, v, version, now)
        return self.get(tenant, assistant_id)

    def set_latest(self, tenant: str, assistant_id: str, version: int) -> dict[str, Any] | None:
        """Point the assistant at one of its versions; None if either is unknown."""
        with self.db.transaction() as tx:
            v = _row(tx.fetchone("SELECT * FROM api_assistant_versions WHERE assistant_id = ? AND version = ?"
                                 " AND tenant = ?", (assistant_id, version, tenant)))
            if v is None:
                return None
            self._point(tx, assistant_id, v, version, iso_now())
        return self.get(tenant, assistant_id)

    def versions(self, tenant: str, assistant_id: str, *, metadata: dict[str, Any] | None = None, limit: int = 10,
                 offset: int = 0) -> list[dict[str, Any]]:
        """The assistant's versions, newest first (filtered by metadata)."""
        with self.db.transaction() as tx:
            rows = [_row(r) for r in tx.fetchall(
                "SELECT * FROM api_assistant_versions WHERE assistant_id = ? AND tenant = ? ORDER BY version DESC",
                (assistant_id, tenant))]
        rows = [r for r in rows if r and all(r["metadata"].get(k) == val for k, val in (metadata or {}).items())]
        return rows[offset: offset + limit]  # type: ignore[return-value]

    def delete(self, tenant: str, assistant_id: str) -> bool:
        """Delete the assistant and its versions; False if the tenant has none by that id."""
        with self.db.transaction() as tx:
            n = tx.execute("DELETE FROM api_assistants WHERE assistant_id = ? AND tenant = ?", (assistant_id, tenant))
            if n:
                tx.execute("DELETE FROM api_assistant_versions WHERE assistant_id = ?", (assistant_id,))
        return bool(n)

    def all(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's assistants (current versions)."""
        with self.db.transaction() as tx:
            return [_row(r) for r in tx.fetchall("SELECT * FROM api_assistants WHERE tenant = ?"  # type: ignore[misc]
                                                 " ORDER BY created_at, assistant_id", (tenant,))]
