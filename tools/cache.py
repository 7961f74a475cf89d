"""Cached results of read-only tools (customer, order and account reads, knowledge search).

Why: a run reads the same records its previous runs read (a customer writes twice, a run
is retried on another worker, an evaluation runs the set again), and a real back office
or search service is slower and costlier than keel's database. A read tool opts in with
``cache_ttl_s`` on its declaration (:func:`tools.declaration.tool`); nothing else is cached.

Correctness across processes and hosts: the entries and their invalidation live in keel's
database, never in a process. Invalidation is by generation counters per ``(tenant, tag)``:

- tag ``*`` is the tenant's whole back office: a fixtures load (:meth:`BackOffice.load_fixtures`)
  bumps it, so every cached read of the tenant is stale at once;
- tag ``customer:<id>``: every side effect the runner commits bumps the tag of the ticket's
  customer *in the side effect's own transaction*. The runner lets a tool touch only that
  customer's records (ownership is checked on every call), so a refund of one of their
  orders, an email change or a subscription cancel invalidates every cached read of that
  customer's records, and nothing else.

An entry records the generations it was read under, taken *before* the tool read the
records; a write that commits in between makes the entry stale, never wrong. A hit is
served only when the entry is within its TTL and every generation still matches. A result
depends on the ticket's customer (ownership), so customer-scoped entries are keyed by it.

Writes that bypass the runner (an operator editing the back office by hand) are bounded by
the TTL alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from keel import metrics
from keel.db import Database, Tx

__all__ = ["ToolCache", "CachedRead", "Cacheable", "TOOL_CACHE_DDL", "TENANT_TAG", "bump", "customer_tag", "record_write",
           "invalidate_tenant"]

log = logging.getLogger("keel.tools.cache")

TOOL_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS tool_cache_gen (
  tenant TEXT NOT NULL,
  tag TEXT NOT NULL,
  gen BIGINT NOT NULL,
  PRIMARY KEY (tenant, tag)
);
CREATE TABLE IF NOT EXISTS tool_cache (
  tenant TEXT NOT NULL,
  tool TEXT NOT NULL,
  digest TEXT NOT NULL,
  stamp TEXT NOT NULL,
  output TEXT NOT NULL,
  expires_ms BIGINT NOT NULL,
  PRIMARY KEY (tenant, tool, digest)
)
"""
"""Created with the back office (:meth:`tools.backoffice.BackOffice.setup`): its writes bump these."""

PURGE_EVERY = 256
"""Every this many stores, a process deletes the expired entries."""

TENANT_TAG = "*"
"""The tag of a tenant's whole back office."""


def customer_tag(customer_id: str) -> str:
    """The tag of one customer's records."""
    return f"customer:{customer_id}"


def bump(tx: Tx, tenant: str, tag: str) -> None:
    """Advance one generation in ``tx``: every entry read under the old one is stale once it commits."""
    tx.execute(
        "INSERT INTO tool_cache_gen (tenant, tag, gen) VALUES (?, ?, 1)"
        " ON CONFLICT (tenant, tag) DO UPDATE SET gen = tool_cache_gen.gen + 1",
        (tenant, tag))


def record_write(tx: Tx, tenant: str, customer_id: str) -> None:
    """A side effect on ``customer_id``'s records is committing in ``tx`` (the runner calls this)."""
    bump(tx, tenant, customer_tag(customer_id))


def invalidate_tenant(tx: Tx, tenant: str) -> None:
    """The tenant's back office is being replaced in ``tx`` (a fixtures load)."""
    bump(tx, tenant, TENANT_TAG)


@dataclass(frozen=True)
class CachedRead:
    """One cacheable call: where its entry lives, the generations it is read under, and the
    entry's output when it was a hit."""

    tenant: str
    tool: str
    digest: str
    stamp: str
    ttl_s: float
    output: dict[str, Any] | None = None

    @property
    def hit(self) -> bool:
        """The cache answered: the tool need not run."""
        return self.output is not None


class Cacheable(Protocol):
    """What the cache reads of a declaration (:class:`tools.declaration.ToolDecl`; not imported
    here: the back office, which the declarations import, bumps this module's generations)."""

    name: str
    side_effect: bool
    output_model: type[BaseModel]
    cache_ttl_s: float | None
    cache_scope: str


@functools.lru_cache(maxsize=256)
def _contract(output_model: type[BaseModel]) -> str:
    """A digest of the tool's output contract: a changed output model never reuses an entry."""
    schema = json.dumps(output_model.model_json_schema(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _lookup_sql(tags: int) -> str:
    """One row: the generation of each of ``tags`` tags (``g0``, ``g1``…; NULL: never bumped)
    and the entry's stamp, output and expiry (NULL: no entry). Parameters: (tenant, tag) per
    tag, then tenant, tool, digest."""
    gens = " ".join(f"LEFT JOIN tool_cache_gen g{i} ON g{i}.tenant = ? AND g{i}.tag = ?" for i in range(tags))
    cols = "".join(f"g{i}.gen AS g{i}, " for i in range(tags))
    return (f"SELECT {cols}c.stamp AS entry_stamp, c.output AS output, c.expires_ms AS expires_ms"
            f" FROM (SELECT 1 AS one) AS base {gens}"
            " LEFT JOIN tool_cache c ON c.tenant = ? AND c.tool = ? AND c.digest = ?")


class ToolCache:
    """Read-only tool results in keel's database, per tenant, with a TTL and write invalidation.

    ``clock`` returns seconds since the epoch; it must agree across processes (the wall
    clock by default); tests inject one to expire entries.
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._writes = 0

    def setup(self) -> None:
        """Create the tables (idempotent; the back office's set-up does it too)."""
        self.db.executescript(TOOL_CACHE_DDL)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def lookup(self, decl: Cacheable, tenant: str, customer_id: str, args_digest: str) -> CachedRead | None:
        """The call's cache entry (``hit``) or what a miss must be stored under; None when the
        tool is not cacheable or the cache cannot be read (the tool then simply runs)."""
        if decl.cache_ttl_s is None or decl.side_effect:
            return None
        tags = [TENANT_TAG] + ([customer_tag(customer_id)] if decl.cache_scope == "customer" else [])
        owner = customer_id if decl.cache_scope == "customer" else ""
        digest = hashlib.sha256(f"{owner}|{args_digest}|{_contract(decl.output_model)}".encode()).hexdigest()
        try:
            # the generations and the entry in one statement (one snapshot, one round trip, where a
            # transaction of two reads took four): read before the tool reads (see module doc)
            found = self.db.fetchone(_lookup_sql(len(tags)), [*(x for t in tags for x in (tenant, t)),
                                                             tenant, decl.name, digest])
        except Exception as exc:  # noqa: BLE001 - a cache never fails a tool call
            log.warning("tool cache unreadable (%s); running the tool", type(exc).__name__)
            return None
        found = found or {}
        stamp = ".".join(str(int(found.get(f"g{i}") or 0)) for i in range(len(tags)))
        row = None if found.get("entry_stamp") is None else {
            "stamp": found["entry_stamp"], "output": found["output"], "expires_ms": found["expires_ms"]}
        read = CachedRead(tenant=tenant, tool=decl.name, digest=digest, stamp=stamp, ttl_s=decl.cache_ttl_s)
        if row is not None and row["stamp"] == stamp and int(row["expires_ms"]) > self._now_ms():
            try:
                output = json.loads(row["output"])
            except ValueError:
                output = None
            if isinstance(output, dict):
                metrics.cache_hit("tool", tenant)
                return CachedRead(**{**read.__dict__, "output": output})
        metrics.cache_miss("tool", tenant)
        return read

    def store(self, read: CachedRead, output: dict[str, Any]) -> None:
        """Keep a successful read's output under the generations it was read under."""
        expires = self._now_ms() + max(1, math.ceil(read.ttl_s * 1000))
        try:
            self.db.execute(
                "INSERT INTO tool_cache (tenant, tool, digest, stamp, output, expires_ms) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, tool, digest) DO UPDATE SET stamp = excluded.stamp, output = excluded.output,"
                " expires_ms = excluded.expires_ms",
                (read.tenant, read.tool, read.digest, read.stamp, json.dumps(output, ensure_ascii=False), expires))
            self._writes += 1
            if self._writes % PURGE_EVERY == 0:  # expired entries do not pile up
                self.purge()
        except Exception as exc:  # noqa: BLE001 - the result stands; it is only not kept
            log.warning("could not keep a tool result in the cache (%s)", type(exc).__name__)

    def purge(self) -> int:
        """Delete expired entries; returns how many."""
        return self.db.execute("DELETE FROM tool_cache WHERE expires_ms <= ?", (self._now_ms(),))
