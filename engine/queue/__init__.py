"""Durable run queue: threads, runs, their stream events, and approval decisions.

One job per module: :mod:`~engine.queue.schema` (tables), :mod:`~engine.queue.threads`,
:mod:`~engine.queue.runs` (runs and approval decisions), :mod:`~engine.queue.leases` (the
workers' lease protocol), :mod:`~engine.queue.events` (stream events),
:mod:`~engine.queue.wakeups` (notifications); :class:`RunQueue` is all of them on one
database.

Every run the API accepts is a row of ``api_runs`` in keel's own database; ``keel
worker`` processes (any number, any host) and the embedded worker thread of ``keel
serve`` claim rows, execute them against the checkpointed graph and write the outcome
back. The API process never runs a graph itself, so a request handler that dies loses
nothing and a worker that dies loses only its lease.

Why ``SELECT … FOR UPDATE SKIP LOCKED`` leases rather than a queue library
(procrastinate, pgqueuer, Celery, …):

* The queue must share a transaction with keel's own rows. Creating a run checks and
  marks its thread busy (multitask strategy ``reject``/``enqueue``) under the thread's
  row lock; claiming a run re-checks that no other run of the thread is live. A
  library with its own tables and connection would make those two writes
  non-atomic, and LangGraph's ``RunCreate`` fields (stream modes, command, checkpoint)
  would live in opaque job payloads we could not query (run list, dead letters).
* It must also run on SQLite for the embedded default; every Postgres queue library is
  Postgres-only, so we would keep a second implementation anyway.
* The pattern is small (claim, heartbeat, finish, retry: a few statements here), is
  the one those libraries use internally, and has no broker to operate.

Lease protocol: a claim sets ``lease_owner`` and ``lease_expires_at``; the worker
heartbeats every ``lease/3`` seconds. A run whose lease expired (the worker died or
hung) is claimable again and the new worker resumes it from the graph's last
checkpoint, up to ``KEEL_WORKER_MAX_LEASE_EXPIRIES`` times: a run whose lease keeps
expiring (it crashes every worker it lands on) is dead-lettered instead. Finishing,
retrying and heartbeating are conditioned on still owning the
lease, so a worker that lost its lease cannot overwrite the new owner's outcome. Times
are epoch seconds from the workers' clocks (keep hosts NTP-synced; the lease, 30 s by
default, dwarfs ordinary skew).
"""

from __future__ import annotations

from engine.queue.base import (
    ACTIVE,
    LEASE_EXPIRED_REPEATEDLY,
    RETRIES_EXHAUSTED,
    TERMINAL,
    NotCancellable,
    NotFound,
    ThreadBusy,
    iso_now,
    new_id,
)
from engine.queue.events import StreamEvents
from engine.queue.leases import Claim, Leases, backoff_delay
from engine.queue.runs import RunStore
from engine.queue.schema import SCHEMA_LOCK, QueueSchema
from engine.queue.threads import ThreadStore
from engine.queue.wakeups import Wakeups

__all__ = [
    "RunQueue",
    "Claim",
    "LEASE_EXPIRED_REPEATEDLY",
    "RETRIES_EXHAUSTED",
    "SCHEMA_LOCK",
    "ThreadBusy",
    "NotFound",
    "NotCancellable",
    "TERMINAL",
    "ACTIVE",
    "new_id",
    "iso_now",
    "backoff_delay",
]


class RunQueue(ThreadStore, RunStore, Leases, StreamEvents, Wakeups, QueueSchema):
    """Threads and runs of the API, and the lease protocol of the workers, on one database."""

    def setup(self) -> RunQueue:
        """Create the tables (idempotent); returns the queue."""
        QueueSchema.setup(self)
        return self
