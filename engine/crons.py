"""Crons (LangGraph Server's ``/runs/crons``): runs started on a schedule, on a thread or on
a new thread each time, by whichever worker notices first, exactly once per tick.

Exactly once, however many workers poll: a tick's run (and, for a stateless cron, its
thread) gets an id derived from the cron and the tick's time, so a second worker (or the
same one after a crash between queueing the run and moving the cron on) finds the run
already there; ``next_run_at`` then moves on with a conditional UPDATE that only the
first worker's succeeds. Ticks missed while no worker ran are not replayed: the next run
is the next tick after now. Times are UTC epoch seconds; a cron's ``timezone`` says how
its schedule reads (``0 9 * * *`` in ``Europe/Paris``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from engine.queue import RunQueue, ThreadBusy
from engine.queue.base import dumps, iso_now, new_id
from keel.db import Database, IntegrityError
from keel.errors import InvalidInput

__all__ = ["CronStore", "CronError", "next_tick"]

log = logging.getLogger("keel.crons")

_DDL = """
CREATE TABLE IF NOT EXISTS api_crons (
  cron_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  thread_id TEXT,
  assistant_id TEXT NOT NULL,
  graph_id TEXT NOT NULL,
  schedule TEXT NOT NULL,
  timezone TEXT NOT NULL,
  payload TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_by TEXT NOT NULL,
  enabled INTEGER NOT NULL,
  end_time DOUBLE PRECISION,
  next_run_at DOUBLE PRECISION,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_crons_due ON api_crons (enabled, next_run_at);
CREATE INDEX IF NOT EXISTS api_crons_tenant ON api_crons (tenant, created_at)
"""

_NS = uuid.UUID("5f0c2b1e-8c4e-4b7a-9d55-6b65656c6372")
"""Namespace of the ids of a tick's run and thread."""


class CronError(InvalidInput, ValueError):
    """A schedule, time zone or end time that cannot be used (the message says which)."""


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}") from None


def next_tick(schedule: str, timezone: str, after: float) -> float:
    """The first tick of ``schedule`` (read in ``timezone``) strictly after ``after`` (epoch s)."""
    if not isinstance(schedule, str) or not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise CronError(f"invalid cron schedule {schedule!r}: five fields, minute hour day month weekday")
    start = datetime.fromtimestamp(after, _zone(timezone))
    return float(croniter(schedule, start).get_next(float))


def _row(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out = dict(r)
    out["payload"] = json.loads(out["payload"])
    out["metadata"] = json.loads(out["metadata"])
    out["enabled"] = bool(out["enabled"])
    return out


class CronStore:
    """The ``api_crons`` table: create, read, delete, and fire due ticks."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.executescript(_DDL)

    # -- the API's side ----------------------------------------------------------------
    def create(self, tenant: str, created_by: str, *, thread_id: str | None, assistant_id: str, graph_id: str,
               schedule: str, timezone: str, payload: dict[str, Any], metadata: dict[str, Any] | None,
               enabled: bool = True, end_time: float | None = None, now: float | None = None) -> dict[str, Any]:
        """A new cron; its first tick is the schedule's next after now (CronError if it has none)."""
        now = time.time() if now is None else now
        first = next_tick(schedule, timezone, now)
        if end_time is not None and end_time <= now:
            raise CronError("end_time is in the past")
        cid, at = new_id(), iso_now()
        self.db.execute(
            "INSERT INTO api_crons (cron_id, tenant, thread_id, assistant_id, graph_id, schedule, timezone, payload,"
            " metadata, created_by, enabled, end_time, next_run_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, tenant, thread_id, assistant_id, graph_id, schedule, timezone, dumps(payload), dumps(metadata or {}),
             created_by, int(enabled), end_time, first, at, at),
        )
        return self.get(tenant, cid)  # type: ignore[return-value]

    def get(self, tenant: str, cron_id: str) -> dict[str, Any] | None:
        """The tenant's cron (another tenant's is None)."""
        return _row(self.db.fetchone("SELECT * FROM api_crons WHERE cron_id = ? AND tenant = ?", (cron_id, tenant)))

    def _where(self, tenant: str, assistant_id: str | None, thread_id: str | None,
               enabled: bool | None) -> tuple[str, list[Any]]:
        sql, params = " WHERE tenant = ?", [tenant]
        if assistant_id is not None:
            sql += " AND assistant_id = ?"
            params.append(assistant_id)
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        if enabled is not None:
            sql += " AND enabled = ?"
            params.append(int(enabled))
        return sql, params

    def search(self, tenant: str, *, assistant_id: str | None = None, thread_id: str | None = None,
               enabled: bool | None = None, limit: int = 10, offset: int = 0, sort_by: str = "created_at",
               sort_order: str = "desc") -> list[dict[str, Any]]:
        """The tenant's crons, filtered and paged (``sort_by`` is one of the table's time/id columns)."""
        col = {"created_at": "created_at", "updated_at": "updated_at", "next_run_date": "next_run_at",
               "cron_id": "cron_id", "assistant_id": "assistant_id", "thread_id": "thread_id",
               "end_time": "end_time"}[sort_by]
        order = "DESC" if sort_order == "desc" else "ASC"
        where, params = self._where(tenant, assistant_id, thread_id, enabled)
        with self.db.transaction() as tx:
            rows = tx.fetchall(f"SELECT * FROM api_crons{where} ORDER BY {col} {order}, cron_id {order} LIMIT ? OFFSET ?",
                               [*params, limit, offset])
        return [_row(r) for r in rows]  # type: ignore[misc]

    def count(self, tenant: str, *, assistant_id: str | None = None, thread_id: str | None = None,
              enabled: bool | None = None) -> int:
        where, params = self._where(tenant, assistant_id, thread_id, enabled)
        return int(self.db.fetchone(f"SELECT COUNT(*) AS n FROM api_crons{where}", params)["n"])  # type: ignore[index]

    def delete(self, tenant: str, cron_id: str) -> bool:
        """Delete the tenant's cron; False if it has none by that id."""
        return self.db.execute("DELETE FROM api_crons WHERE cron_id = ? AND tenant = ?", (cron_id, tenant)) > 0

    def delete_for_thread(self, thread_id: str) -> None:
        """A deleted thread's crons go with it."""
        self.db.execute("DELETE FROM api_crons WHERE thread_id = ?", (thread_id,))

    # -- the workers' side -------------------------------------------------------------
    def fire_due(self, queue: RunQueue, now: float | None = None, limit: int = 50) -> int:
        """Queue the run of every due tick; returns how many this call queued."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            due = tx.fetchall("SELECT * FROM api_crons WHERE enabled = 1 AND next_run_at <= ? ORDER BY next_run_at"
                              " LIMIT ?", (now, limit))
        fired = 0
        for raw in due:
            cron = _row(raw)
            assert cron is not None
            try:
                fired += self._fire(queue, cron, now)
            except Exception:  # noqa: BLE001 - one cron's failure must not stop the others
                log.exception("cron %s: tick at %s failed", cron["cron_id"], cron["next_run_at"])
        return fired

    def _fire(self, queue: RunQueue, cron: dict[str, Any], now: float) -> int:
        tick = cron["next_run_at"]
        queued = 0
        if cron["end_time"] is None or tick <= cron["end_time"]:
            queued = self._queue_tick(queue, cron, tick)
        try:
            following: float | None = next_tick(cron["schedule"], cron["timezone"], max(now, tick))
        except CronError:
            following = None
        if following is not None and cron["end_time"] is not None and following > cron["end_time"]:
            following = None
        # the conditional UPDATE: only one worker moves the cron on from this tick
        self.db.execute(
            "UPDATE api_crons SET next_run_at = ?, enabled = ?, updated_at = ? WHERE cron_id = ? AND next_run_at = ?",
            (following, int(following is not None), iso_now(), cron["cron_id"], tick),
        )
        return queued

    def _queue_tick(self, queue: RunQueue, cron: dict[str, Any], tick: float) -> int:
        """Queue the tick's run under its derived id; 0 if it was queued already."""
        key = f"{cron['cron_id']}:{tick!r}"
        run_id = str(uuid.uuid5(_NS, "run:" + key))
        thread_id = cron["thread_id"]
        if thread_id is None:  # stateless: a new thread per tick, with a derived id too
            thread_id = str(uuid.uuid5(_NS, "thread:" + key))
            try:
                queue.create_thread(cron["tenant"], cron["created_by"], thread_id=thread_id, if_exists="do_nothing",
                                    metadata={"cron_id": cron["cron_id"]})
            except IntegrityError:
                return 0
        p = cron["payload"]
        payload: dict[str, Any] = {"config": p.get("config") or {}, "input": p.get("input")}
        for k in ("interrupt_before", "interrupt_after", "context"):
            if p.get(k):
                payload[k] = p[k]
        try:
            queue.create_run(
                cron["tenant"], thread_id, run_id=run_id, assistant_id=cron["assistant_id"], graph_id=cron["graph_id"],
                kind="input", payload=payload, created_by=cron["created_by"], correlation_id=f"cron-{run_id[:8]}",
                stream_mode=p.get("stream_mode") or [], metadata={**cron["metadata"], "cron_id": cron["cron_id"]},
                multitask_strategy=p.get("multitask_strategy") or "enqueue", set_requester=True,
            )
        except IntegrityError:  # this tick's run exists: another worker (or an earlier try) queued it
            return 0
        except ThreadBusy:
            log.info("cron %s: thread %s busy, tick %s skipped", cron["cron_id"], thread_id, tick)
            return 0
        return 1
