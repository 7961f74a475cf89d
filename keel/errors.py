"""Which failures are the infrastructure's, shared by the nodes and the workers.

A database restarting, a lost connection, an exhausted pool or a timeout is not the
model's or the policy's verdict on a run: a node must not turn it into an escalation, and
a worker retries the run from its last checkpoint instead of failing it. Classes are
matched by name along the MRO and the cause chain, so psycopg's ``AdminShutdown`` or
``CannotConnectNow`` (``OperationalError`` subclasses) count without this floor importing
any driver or SDK; an exception may also say so itself with ``transient = True/False``.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["DATABASE_OUTAGES", "TRANSIENT", "is_database_outage", "is_transient"]

DATABASE_OUTAGES = frozenset({"OperationalError", "InterfaceError", "PoolTimeout"})
"""The database failing (psycopg, sqlite3, psycopg_pool), by class name."""

TRANSIENT = DATABASE_OUTAGES | frozenset(
    {"TransientError", "TransientToolError", "ToolTimeout", "ToolUnavailable", "ServiceUnavailable", "RateLimited",
     "APITimeoutError", "APIConnectionError"}
)
"""Failures worth retrying, by class name: the database's, a tool's or a model API's."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _named(e: BaseException, names: frozenset[str]) -> bool:
    return any(c.__name__ in names for c in type(e).__mro__)


def is_database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, the database failing."""
    return any(_named(e, DATABASE_OUTAGES) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, lost connections, anything marked ``transient = True``
    (the first exception in the chain that says either way decides)."""
    for e in _chain(exc):
        marked = getattr(e, "transient", None)
        if marked is True or marked is False:
            return marked
        if isinstance(e, (TimeoutError, ConnectionError)) or _named(e, TRANSIENT):
            return True
    return False
