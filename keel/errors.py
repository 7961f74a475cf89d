"""keel's errors: one root, one tree, and one answer to "is this worth retrying?".

Every exception keel defines derives from :class:`KeelError`. Each class says what it is
with two class attributes: ``code``, the machine-readable reason an API answer or a CLI
message carries (an instance may carry a finer one, as :class:`~tools.contracts.ToolError`
and :class:`~guards.approvals.ApprovalError` do), and ``retryable``, whether trying the same
thing again later may succeed. Retries are decided by that attribute (and, for the
drivers' exceptions, by the one mapping in :func:`is_retryable`), never by a class name.

The tree (the categories live here, the other classes next to the code that raises them)::

    KeelError                          code                retryable
    ├── ConfigError                    config_error        no
    │   ├── PolicyError (ValueError)       invalid_policy        guards.pack: a pack that cannot be used
    │   ├── GraphConfigError (ValueError)                        engine.loader: langgraph.json or a graph it names
    │   ├── DeclarationError (TypeError)                         tools.declaration: a tool declared wrongly
    │   ├── MissingContext (TypeError)                           graphs.context: a graph run without its context
    │   ├── NoTenant (RuntimeError)                              engine.store: the store used outside a keel run
    │   └── CandidateError (ValueError)    invalid_candidate     engine.candidates: a candidate file keel cannot use
    ├── InvalidInput                   invalid_input       no
    │   ├── EvalError (ValueError)                               evals.report: input keel eval cannot use
    │   ├── CliError                                             cli.commands: a command line that cannot run
    │   ├── CronError (ValueError)                               engine.crons: a schedule or time zone unusable
    │   ├── ReleaseError (ValueError)      invalid_release       engine.releases: a release command that cannot run
    │   ├── ReplayError (ValueError)       replay_error          engine.replay_trace: a run that cannot be replayed
    │   ├── ContextRefused (ValueError)                          engine.run_context: a run's context unusable
    │   └── KeyringError                                         keel.keys: a signing-key command that cannot be done
    ├── PlanIntegrityError             plan_tampered       no    keel.plan: hash or signature mismatch
    │   ├── SigningKeyRetired              signing_key_retired   keel.keys: the plan's signing key was retired
    │   └── UnknownSigningKey              signing_key_unknown   keel.keys: the plan names a key the ring lacks
    ├── ApprovalError                  (per refusal)       no    guards.approvals: a resume refused (+ http_status)
    ├── EscalationError                (per refusal)       no    engine.escalations: a take-over refused (+ http_status)
    ├── BudgetExceeded                 budget_exceeded     no
    │   ├── TokenBudgetExceeded                                  nodes.common: the day's model tokens are spent
    │   └── QuotaExceeded                  quota_exceeded        engine.admission: a new run over a daily quota
    ├── ToolError                      (per refusal)       no    tools.contracts: a tool refused the call
    │   └── TransientToolError             transient_failure yes one attempt failed; the runner backs off
    ├── ToolFailure (RuntimeError)     tool_failed         yes   nodes.execute: a tool's retries are spent; the worker backs off
    ├── ModelError (RuntimeError)      model_unavailable   no    gateway.base: no provider gave a valid output
    │   ├── RecordedModelFailure                                 engine.replay_trace: the recorded call failed too
    │   └── NoRecordedAnswer               replay_diverged       engine.replay_trace: a question the original never asked
    ├── InvalidOutput (ValueError)     invalid_output      no    gateway.base: output parsed but cannot be trusted
    ├── StoreError                     store_error         no
    │   ├── IntegrityError                 conflict              keel.db: a unique or foreign key violated
    │   ├── StartupError                   startup_failed        keel.db: no database to start on
    │   ├── NotFound                       not_found             engine.queue.base: no such row for this tenant
    │   ├── ThreadBusy                     thread_busy           engine.queue.base: the thread has a run in flight
    │   ├── NotCancellable                 approval_executing    engine.queue.base: an approved plan is running
    │   └── AssistantExists                assistant_exists      engine.assistants: that assistant id is taken
    └── LeaseLost                      lease_lost          no    engine.checkpoints: another worker owns the run now

The console's page refusal (``EscalationRefused``, console.escalations) and internal control
flow (``_Abandoned``, ``_Refused``, ``_Stop``, ``_Budget``, ``_SignIn``) derive from
``KeelError`` directly and never leave their module. The historical built-in bases
(``ValueError`` …) are kept, so that ``except ValueError`` around a pack load still works.

Third-party exceptions are mapped in one place, :func:`_foreign_kind`: the database drivers'
(psycopg by SQLSTATE class, ``psycopg_pool.PoolTimeout``, ``sqlite3.OperationalError``), the
built-in ``TimeoutError``/``ConnectionError``, and the model and HTTP clients' timeouts,
connection failures, rate limits and 5xx (OpenAI SDK, httpx; looked up only if imported).
The model gateway falls back to the next model on any provider failure; what a failure is
(a timeout, for charging) it asks :func:`is_timeout`, never a class name.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from typing import ClassVar, Literal

__all__ = [
    "KeelError",
    "ConfigError",
    "InvalidInput",
    "BudgetExceeded",
    "StoreError",
    "DbErrorKind",
    "db_error_kind",
    "is_database_outage",
    "is_retryable",
    "is_timeout",
]


class KeelError(Exception):
    """The root of every exception keel defines (see the tree in the module docstring)."""

    code: str = "keel_error"
    """Machine-readable reason for an API answer or a CLI message (an instance may refine it)."""
    retryable: ClassVar[bool] = False
    """Trying the same operation again later may succeed (a timeout, a lost connection):
    the tool runner and the worker retry exactly the exceptions that say so."""


class ConfigError(KeelError):
    """keel is configured in a way it cannot run with (a policy pack, a graph's context)."""

    code = "config_error"


class InvalidInput(KeelError):
    """Input from a person or a file that keel cannot use; the message says why."""

    code = "invalid_input"


class BudgetExceeded(KeelError):
    """A budget or quota is spent: the work is refused or escalated, not retried."""

    code = "budget_exceeded"


class StoreError(KeelError):
    """What keel's own stores refuse (a missing row, a conflict, no database to start on)."""

    code = "store_error"


# -- the one mapping of third-party exceptions ------------------------------------------------
DbErrorKind = Literal["unavailable", "config", "other"]

_RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "55", "57", "58")
"""Connection exception, transaction rollback (deadlock, serialization), insufficient
resources (too many connections), lock not available, operator intervention (admin or crash
shutdown, the server starting up: ``AdminShutdown``, ``CannotConnectNow``), system error."""
_CONFIG_SQLSTATES = ("28", "3D", "3F", "42501")
"""Invalid authorization, unknown database or schema, insufficient privilege."""
_CONFIG_MESSAGES = (
    "password authentication failed", "authentication failed", "no pg_hba.conf entry", "does not exist",
    "no password supplied", "password is required", "permission denied", "invalid connection option",
    "invalid integer value", "invalid dsn", "invalid uri", "missing \"=\"", "invalid sslmode",
    "server does not support ssl", "ssl is required", "unsupported frontend protocol",
)
"""libpq reports connection-time failures without an SQLSTATE, so the server's refusals that no
retry can fix (credentials, unknown role or database, a malformed URL) are told by their
message. A server with non-English ``lc_messages`` makes these look retryable: start-up then
retries until its timeout, with the server's reason in every log line."""


def _driver_kind(e: BaseException) -> DbErrorKind | None:
    """What a database driver's exception means, or None for any other exception."""
    import psycopg  # a dependency of keel; imported here so that this module stays light

    if isinstance(e, psycopg.Error):  # psycopg_pool.PoolTimeout is an OperationalError
        state = getattr(e, "sqlstate", None) or ""
        text = " ".join(str(e).lower().split())
        if state.startswith(_CONFIG_SQLSTATES) or (not state and any(m in text for m in _CONFIG_MESSAGES)):
            return "config"
        if state.startswith(_RETRYABLE_SQLSTATE_CLASSES):
            return "unavailable"
        if not state and isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
            return "unavailable"  # refused, reset, timed out, closed by a restart; PoolTimeout
        return "other"
    if isinstance(e, sqlite3.OperationalError):
        return "unavailable"  # "database is locked", a busy file
    if isinstance(e, sqlite3.Error):
        return "other"
    return None


_SDK_TRANSIENT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai", ("APITimeoutError", "APIConnectionError", "RateLimitError", "InternalServerError")),
    ("httpx", ("TimeoutException", "NetworkError")),
)
"""A model or HTTP client's failures worth retrying: timed out, unreachable, rate limited, a 5xx."""
_SDK_TIMEOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (("openai", ("APITimeoutError",)), ("httpx", ("TimeoutException",)))
"""A model or HTTP client's timeouts."""


def _loaded(table: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[type[BaseException], ...]:
    """The classes of ``table`` from the SDKs this process has imported: an SDK that is not
    imported raised nothing, and this floor imports none of them."""
    found: list[type[BaseException]] = []
    for module, names in table:
        mod = sys.modules.get(module)
        if mod is not None:
            found.extend(t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type))
    return tuple(found)


def _foreign_kind(e: BaseException) -> DbErrorKind | None:
    """The one mapping of exceptions keel does not define: the drivers', then the built-in and
    the SDKs' timeouts and connection errors (``unavailable``); None when ``e`` says nothing."""
    kind = _driver_kind(e)
    if kind is not None:
        return kind
    if isinstance(e, (TimeoutError, ConnectionError, *_loaded(_SDK_TRANSIENT))):
        return "unavailable"
    return None


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a call running out of time (the built-in
    ``TimeoutError``, httpx's or the OpenAI SDK's), by type."""
    types = (TimeoutError, *_loaded(_SDK_TIMEOUTS))
    return any(isinstance(e, types) for e in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again later may succeed: the one retry decision of keel.

    Along ``exc`` and its causes, the first exception that has a say decides: a
    :class:`KeelError` by its ``retryable`` flag, a driver's or a built-in's by
    :func:`_foreign_kind` (the database unavailable, a timeout, a lost connection: yes; a
    configuration the database refuses, a bug: no). Nothing with a say: no.
    """
    for e in _chain(exc):
        if isinstance(e, KeelError):
            return e.retryable
        kind = _foreign_kind(e)
        if kind is not None:
            return kind == "unavailable"
    return False


def is_database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, the database failing (a lost connection, a
    restart, an exhausted pool, a locked SQLite file): not the model's or the policy's
    verdict on a run, so a node re-raises it for the worker to retry the step."""
    return any(_driver_kind(e) == "unavailable" for e in _chain(exc))


def db_error_kind(exc: BaseException) -> DbErrorKind:
    """Whether ``exc`` means the database is unavailable for now (retry), refuses this
    configuration (fail fast), or is something else (a bug: not the database's doing).

    The exception and its causes are examined, the first one the mapping knows deciding.
    """
    for e in _chain(exc):
        kind = _foreign_kind(e)
        if kind is not None:
            return kind
    return "other"
