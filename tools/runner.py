"""The tool runner: the one door through which the agent touches the back office.

Why a runner and not direct calls: every call must pass the same checks in the same order
and fail the same way, whichever node makes it:

1. unknown tool → ``unknown_tool``
2. not in the specialist's allowlist → ``tool_not_allowed``
3. arguments fail the input model → ``invalid_arguments`` (field names only, no values)
4. tenant authorization: every query is scoped to ``ctx.tenant``, so another tenant's
   records are simply not found; another customer's are refused (``not_owner``)
5. a side-effecting tool without an idempotency key → ``idempotency_key_required``
6. per-tenant rate limit (:class:`keel.ratelimit.LocalRateLimiter`) → ``rate_limited``
7. each attempt runs in a worker thread, in its own transaction, under a timeout
   → ``timeout``; retryable failures (:func:`keel.errors.is_retryable`: a retryable
   ``ToolError`` such as ``TransientToolError``, the database unavailable) are retried under
   keel's one retry policy (:mod:`keel.retry`: exponential backoff, equal jitter), then
   → ``transient_failure``
8. a side-effecting call's ``ctx.guard``, if any, runs in that transaction before the
   tool acts (after the ledger lookup: a replay is never re-judged); a ``ToolError`` it
   raises refuses the call with its code. A decision that depends on other runs' writes
   (the refund velocity rule) is so taken atomically with this write.

Exactly-once side effects: the side effect and its ``tool_ledger`` row commit in the same
transaction. A repeated key returns the first result (``replayed=True``) without acting
again, across restarts and concurrent callers (the ledger's primary key decides the
race); a repeated key with other arguments → ``idempotency_conflict``.

Cached reads: with a :class:`~tools.cache.ToolCache`, a read-only tool declared with
``cache_ttl_s`` is answered from the cache after check 6 when a fresh entry exists
(``cached=True``), and every committed side effect invalidates its customer's entries in
the side effect's own transaction.

Errors returned never carry a stack trace, SQL text, argument values or secrets.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from keel.db import IntegrityError, Tx
from keel.errors import KeelError, is_retryable
from keel.ratelimit import LocalRateLimiter
from keel.retry import Backoff, RetryPolicy
from keel.types import StrictModel

from .backoffice import BackOffice, iso_z
from .cache import CachedRead, ToolCache, record_write
from .contracts import ToolEnv, ToolError, TransientToolError
from .registry import TOOLS, ToolSpec
from .telemetry import tool_span

__all__ = [
    "ToolContext",
    "ToolResult",
    "ToolRunner",
    "TransientToolError",
    "FaultHook",
    "args_hash",
]

logger = logging.getLogger("keel.tools")

FaultHook = Callable[[str, int], None]
"""``hook(tool_name, attempt)``, called in the worker before each attempt (tests inject
faults: raise :class:`TransientToolError`, or sleep past the timeout)."""


class ToolContext(StrictModel):
    """Who is calling, for which ticket, with what authority."""

    tenant: str = Field(min_length=1, max_length=64)
    """Tenant of the ticket (from the authenticated caller); scopes every query."""
    customer_id: str = Field(min_length=1, max_length=64)
    """The ticket's customer: the only owner whose records the tools may read or change."""
    user_id: str = Field(min_length=1, max_length=128)
    """The user on whose behalf the run acts (audit)."""
    allowlist: frozenset[str]
    """Tools the current specialist may call (from the policy pack)."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    """Required for side-effecting tools; the same key never acts twice."""
    correlation_id: str = Field(default="", max_length=128)
    """Ties log lines of one run together."""
    now: AwareDatetime
    """The run's clock, stamped on records the tools write."""
    guard: Callable[[Tx], None] | None = Field(default=None, exclude=True, repr=False)
    """A side effect's last check, run in its transaction before the tool acts; raises
    :class:`ToolError` to refuse (recorded in the ledger like the tool's own refusals)."""


class ToolResult(StrictModel):
    """The outcome of one tool call, safe to store in graph state and show a reviewer."""

    ok: bool
    """The tool ran and returned ``output``."""
    output: dict[str, Any] | None = None
    """The validated output model as JSON-able data (None on error)."""
    error_code: str | None = None
    """Machine-readable reason on error (``not_found``, ``timeout``, …)."""
    error: str | None = None
    """Short, safe message on error."""
    attempts: int = 0
    """Attempts made (0 when refused before running; at most 1 + max_retries)."""
    replayed: bool = False
    """The result was recorded by an earlier call with the same idempotency key."""
    dry_run: bool = False
    """A side effect that did not write (``KEEL_ENV=staging``): ``output`` is the tool's preview."""
    cached: bool = False
    """A read answered from keel's tool cache (:mod:`tools.cache`): the tool did not run."""


def args_hash(tool: str, args: BaseModel) -> str:
    """Hash of a tool name and its validated arguments (what a repeated key must match)."""
    canonical = json.dumps([tool, args.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Abandoned(KeelError):
    """The caller timed out: roll the attempt back instead of committing."""


def _fail(code: str, message: str, attempts: int = 0) -> ToolResult:
    return ToolResult(ok=False, error_code=code, error=message, attempts=attempts)


def _invalid_fields(exc: ValidationError) -> str:
    fields = sorted({str(e["loc"][0])[:64] if e["loc"] else "arguments" for e in exc.errors()})
    return ", ".join(fields)


class ToolRunner:
    """Runs registered tools against a :class:`BackOffice` with the checks above."""

    def __init__(
        self,
        backoffice: BackOffice,
        timeout_s: float = 5.0,
        rate_per_minute: float = 600,
        max_retries: int = 2,
        fault_hook: FaultHook | None = None,
        *,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 1.0,
        max_workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
        registry: Mapping[str, ToolSpec] | None = None,
        dry_run_side_effects: bool = False,
        cache: ToolCache | None = None,
    ) -> None:
        if backoffice.db.url.endswith(":memory:"):
            raise ValueError("an in-memory SQLite database is per thread; the runner needs a file or Postgres")
        self.backoffice = backoffice
        self.registry: Mapping[str, ToolSpec] = TOOLS if registry is None else registry
        """The tools this runner serves (another workflow's, e.g. ``tools.supply``); the
        ledger, checks and retries are the same for every registry."""
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.fault_hook = fault_hook
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._limiter = LocalRateLimiter(rate_per_minute, clock=clock)
        self.dry_run_side_effects = dry_run_side_effects
        """Side-effecting tools return their preview instead of writing (the environment's
        ``dry_run_side_effects``, see ``guards.env_policy``); reads run as usual."""
        self.cache = cache
        """Read-only results kept per tenant (tools declared with ``cache_ttl_s``); with a cache,
        every side effect also invalidates its customer's cached reads, in its own transaction."""
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="keel-tool")

    def close(self) -> None:
        """Stop the worker threads (attempts still running finish in the background)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        """Run tool ``name`` with ``args`` for ``ctx``; never raises for a tool's failure."""
        with tool_span(name, ctx.tenant) as report:  # gen_ai.tool.name span and tool metrics (tools.telemetry)
            result = self._call(name, args, ctx)
            report(result)
        logger.debug(
            "tool call",
            extra={"tool": name, "tenant": ctx.tenant, "correlation_id": ctx.correlation_id, "ok": result.ok,
                   "error_code": result.error_code, "attempts": result.attempts, "replayed": result.replayed},
        )
        return result

    def _call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        spec = self.registry.get(name)
        if spec is None:
            return _fail("unknown_tool", "unknown tool")
        if name not in ctx.allowlist:
            return _fail("tool_not_allowed", f"tool {name} is not allowed for this step")
        try:
            validated = spec.input_model.model_validate(args)
        except ValidationError as e:
            return _fail("invalid_arguments", f"invalid arguments: {_invalid_fields(e)}")
        if spec.side_effect and not ctx.idempotency_key:
            return _fail("idempotency_key_required", f"tool {name} needs an idempotency key")
        if not self._limiter.allow(ctx.tenant):
            return _fail("rate_limited", "tool rate limit reached for this tenant; try again later")
        if spec.side_effect and self.dry_run_side_effects:
            return self._dry_run(spec, validated, ctx)

        env = ToolEnv(ctx.tenant, ctx.customer_id, ctx.now, ctx.idempotency_key if spec.side_effect else None,
                      ctx.guard if spec.side_effect else None)
        digest = args_hash(name, validated)
        cached = self.cache.lookup(spec, ctx.tenant, ctx.customer_id, digest) if self.cache is not None else None
        if cached is not None and cached.output is not None:
            return ToolResult(ok=True, output=cached.output, cached=True)
        attempts = 0

        def attempt() -> ToolResult:
            nonlocal attempts
            attempts += 1
            return self._submit(spec, validated, env, digest, attempts)

        try:
            return self._keep(cached, self.retry_policy.retrying()(attempt))
        except Exception as e:
            if is_retryable(e):  # the policy's attempts are spent
                return _fail("transient_failure", f"tool {name} failed after {attempts} attempts", attempts)
            if isinstance(e, ToolError):  # refused before the tool ran (a fault hook)
                return _fail(e.code, e.message, attempts)
            logger.exception("tool %s failed unexpectedly (correlation_id=%s)", name, ctx.correlation_id)
            return _fail("internal_error", f"tool {name} failed unexpectedly", attempts)

    def _keep(self, cached: CachedRead | None, result: ToolResult) -> ToolResult:
        """A cacheable read's successful result goes into the cache (under the generations read before it ran)."""
        if cached is not None and self.cache is not None and result.ok and result.output is not None:
            self.cache.store(cached, result.output)
        return result

    def _dry_run(self, spec: ToolSpec, args: BaseModel, ctx: ToolContext) -> ToolResult:
        """A side effect that does not write: the tool's preview (the records it would change),
        marked ``dry_run``. No transaction, no ledger row: nothing happened."""
        changes: list[dict[str, Any]] = []
        error = None
        try:
            if spec.preview is not None:
                changes = [c.model_dump(mode="json") for c in spec.preview(self.backoffice, ctx.tenant, args)]
        except Exception as e:  # noqa: BLE001 - a preview is advisory; the dry run still writes nothing
            error = type(e).__name__
        output = {"dry_run": True, "tool": spec.name, "changes": changes, **({"preview_error": error} if error else {})}
        return ToolResult(ok=True, output=output, attempts=1, dry_run=True)

    @property
    def retry_policy(self) -> RetryPolicy:
        """keel's retry policy with this runner's attempts and backoff (:mod:`keel.retry`)."""
        return RetryPolicy(Backoff(self.backoff_base_s, self.backoff_max_s), max_attempts=self.max_retries + 1)

    def _submit(self, spec: ToolSpec, args: BaseModel, env: ToolEnv, digest: str, attempt: int) -> ToolResult:
        """One attempt in a worker thread under the timeout; raises what the attempt raised.

        A timeout or a shut-down runner is a result, never retried here: the abandoned
        attempt may still be running (it rolls back when it notices), and the worker's retry
        of the run comes after a backoff long enough for it to finish.
        """
        abandoned = threading.Event()
        try:
            # in the caller's context: the attempt's spans (a refund's last policy check) join the run's trace
            future = self._pool.submit(contextvars.copy_context().run, self._attempt, spec, args, env, digest, attempt,
                                       abandoned)
        except RuntimeError:
            return _fail("unavailable", "tool runner is shut down", attempt - 1)
        done, _ = concurrent.futures.wait([future], timeout=self.timeout_s)
        if not done:
            abandoned.set()
            future.cancel()
            return _fail("timeout", f"tool {spec.name} timed out after {self.timeout_s:g}s", attempt)
        return future.result().model_copy(update={"attempts": attempt})

    def _attempt(
        self, spec: ToolSpec, args: BaseModel, env: ToolEnv, digest: str, attempt: int, abandoned: threading.Event
    ) -> ToolResult:
        if self.fault_hook is not None:
            self.fault_hook(spec.name, attempt)
        return self._run_once(spec, args, env, digest, abandoned)

    def _run_once(
        self, spec: ToolSpec, args: BaseModel, env: ToolEnv, digest: str, abandoned: threading.Event
    ) -> ToolResult:
        db = self.backoffice.db
        try:
            with db.transaction() as tx:
                if spec.side_effect:
                    prior = _ledger_get(tx, env.idempotency_key)
                    if prior is not None:
                        return _from_ledger(prior, env.tenant, spec.name, digest)
                try:
                    if env.guard is not None and spec.side_effect:
                        env.guard(tx)
                    output = spec.fn(self.backoffice, tx, env, args)
                    if not isinstance(output, spec.output_model):
                        raise TypeError(f"{spec.name} returned {type(output).__name__}")
                    result = ToolResult(ok=True, output=output.model_dump(mode="json"))
                except ToolError as e:
                    if e.retryable:  # not a refusal: roll back, and the retry policy decides
                        raise
                    result = ToolResult(ok=False, error_code=e.code, error=e.message)
                if abandoned.is_set():
                    raise _Abandoned()
                if spec.side_effect:
                    _ledger_put(tx, env, spec.name, digest, result)
                    if self.cache is not None:  # committed with the write: the customer's cached reads are stale
                        record_write(tx, env.tenant, env.customer_id)
                return result
        except IntegrityError:
            if not spec.side_effect:
                raise TransientToolError("conflicting write") from None
            with db.transaction() as tx:  # another caller with the same key committed first
                prior = _ledger_get(tx, env.idempotency_key)
            if prior is None:
                raise TransientToolError("conflicting write") from None
            return _from_ledger(prior, env.tenant, spec.name, digest)


def _ledger_get(tx: Tx, key: str | None) -> dict[str, Any] | None:
    return tx.fetchone("SELECT * FROM tool_ledger WHERE idempotency_key = ?", (key,))


def _ledger_put(tx: Tx, env: ToolEnv, tool: str, digest: str, result: ToolResult) -> None:
    stored = result.model_dump(include={"ok", "output", "error_code", "error"})
    tx.execute(
        "INSERT INTO tool_ledger (idempotency_key, tenant, tool, args_hash, result_json, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (env.idempotency_key, env.tenant, tool, digest, json.dumps(stored), iso_z(env.now)),
    )


def _from_ledger(row: dict[str, Any], tenant: str, tool: str, digest: str) -> ToolResult:
    if (row["tenant"], row["tool"], row["args_hash"]) != (tenant, tool, digest):
        return _fail("idempotency_conflict", "idempotency key was already used for a different call")
    return ToolResult(**json.loads(row["result_json"]), replayed=True)
