"""Request and response bodies. Unknown fields are rejected (422 with the field named).

Request models accept every field the official ``langgraph-sdk`` sends, so its client
works unchanged; fields keel does not implement are accepted only with their neutral
values and otherwise refused with a reason rather than silently ignored.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

from api.errors import http_error
from keel.audit import AuditRow
from keel.types import Ticket

__all__ = [
    "Body",
    "RunConfig",
    "MAX_RECURSION_LIMIT",
    "finite_json",
    "json_bytes",
    "KeelJSONResponse",
    "AssistantSearch",
    "AssistantCount",
    "ThreadCreate",
    "ThreadPatch",
    "ThreadSearch",
    "ThreadCount",
    "StateCheckpointRequest",
    "HistoryRequest",
    "ThreadStateUpdate",
    "ThreadCopyOut",
    "StorePut",
    "StoreDelete",
    "StoreSearch",
    "StoreNamespaces",
    "StoreItemOut",
    "CronCreate",
    "CronSearch",
    "CronCount",
    "CronOut",
    "AssistantCreate",
    "AssistantPatch",
    "AssistantVersions",
    "AssistantLatest",
    "RunCreate",
    "ApproveBody",
    "RejectBody",
    "EditBody",
    "ReplayBody",
    "TicketCreate",
    "MAX_OFFSET",
    "returns",
    "FieldError",
    "ErrorOut",
    "AssistantOut",
    "AssistantSchemasOut",
    "ThreadOut",
    "CheckpointOut",
    "TaskOut",
    "ThreadStateOut",
    "RunOut",
    "ApprovalSummary",
    "ApprovalPage",
    "ApprovalDetail",
    "DecisionOut",
    "AuditRowOut",
    "AuditPage",
    "ChainReportOut",
    "ThreadAuditPage",
    "TicketOut",
    "ReplayOut",
    "FixturesOut",
    "DeadLetterPage",
]

MAX_OFFSET = 2**63 - 1
"""Largest paging offset (a 64-bit SQL integer); beyond it a request is 422, not a database error."""

StreamModeName = Literal[
    "values", "updates", "messages", "messages-tuple", "events", "debug", "custom", "tasks", "checkpoints", "tools",
    "lifecycle",
]
SUPPORTED_STREAM_MODES = ("values", "updates", "messages", "messages-tuple", "events", "debug", "custom", "tasks",
                          "checkpoints")
"""LangGraph Server's run stream modes (``tools``/``lifecycle`` belong to its v2 event protocol)."""


MAX_RECURSION_LIMIT = 1_000
"""Largest ``config.recursion_limit`` of a run (LangGraph's default is 25; the support
workflow needs about 10 steps, and per-run caps end a longer run anyway)."""


class Body(BaseModel):
    """Base of request bodies: unknown fields are an error, and so is a float field that is
    not finite (the request guard in :mod:`api.app` already refuses such numbers anywhere in
    a body; this keeps typed fields strict even for bodies that reach a model another way)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FieldError(BaseModel):
    """One invalid field of a request (422)."""

    loc: list[str | int]
    """Where: ``body``/``query``/``path`` and the field path."""
    field: str
    """The field path, dotted."""
    msg: str
    """What is wrong with it."""
    type: str
    """Machine-readable kind of error."""


class ErrorOut(BaseModel):
    """Every error response."""

    detail: str | list[FieldError]
    """What is wrong (a message, or the list of invalid fields)."""
    code: str | None = None
    """Machine-readable reason."""
    reason: str | None = None
    """For invalid fields: a one-line summary."""
    request_id: str | None = None
    """The correlation id to quote."""


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±Infinity) replaced by ``None``.

    The rule for values already stored that JSON cannot carry (rows written before the
    request guard refused them, or inserted by hand): they read back as ``null``, like
    JavaScript's ``JSON.stringify`` writes them, so one bad value never makes a thread,
    run, search or stream unreadable (strict JSON encoders raise on them: a 500)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def json_bytes(value: Any, *, ensure_ascii: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """Strict JSON (RFC 8259) of ``value``, whatever it holds: every response body of keel's
    API is written here (:class:`KeelJSONResponse`, the wait and stream bodies).

    Non-finite floats become ``null`` (:func:`finite_json`); a string that cannot be UTF-8
    (an unpaired surrogate) is written as its ``\\u`` escape. Plain values take the
    fast path: one ``json.dumps``."""
    try:
        text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":"), default=default)
    except ValueError:
        text = json.dumps(finite_json(value), ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":"),
                          default=default)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json_bytes(value, ensure_ascii=True, default=default)


class KeelJSONResponse(JSONResponse):
    """The API's JSON response: :func:`json_bytes`, so no stored value can make a read fail."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def returns(model: Any, status: int = 200) -> dict[str, Any]:
    """Route-decorator arguments that document ``model`` as the success body in the OpenAPI
    document without validating responses against it at run time (no per-request cost)."""
    return {"response_model": None, "responses": {status: {"model": model}}}


# -- response shapes (documentation: the OpenAPI document, checked by the schemathesis test) --
class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class AssistantOut(_Out):
    assistant_id: str
    graph_id: str
    config: dict[str, Any]
    context: dict[str, Any]
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    version: int
    name: str
    description: str | None


class AssistantSchemasOut(_Out):
    graph_id: str
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    state_schema: dict[str, Any] | None
    config_schema: dict[str, Any] | None
    context_schema: dict[str, Any] | None


ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted", "dead"]


class ThreadOut(_Out):
    thread_id: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    status: ThreadStatus
    values: Any
    interrupts: dict[str, list[Any]]
    config: dict[str, Any]
    error: Any


class CheckpointOut(_Out):
    thread_id: str | None
    checkpoint_ns: str | None
    checkpoint_id: str | None
    checkpoint_map: dict[str, Any] | None = None


class TaskOut(_Out):
    id: str
    name: str
    path: list[Any]
    error: str | None
    interrupts: list[Any]
    checkpoint: Any
    state: Any
    result: Any


class ThreadStateOut(_Out):
    values: Any
    next: list[str]
    tasks: list[TaskOut]
    checkpoint: CheckpointOut
    metadata: dict[str, Any]
    created_at: str | None
    parent_checkpoint: CheckpointOut | None
    interrupts: list[Any]


class RunOut(_Out):
    run_id: str
    thread_id: str
    assistant_id: str
    created_at: str
    updated_at: str
    status: RunStatus
    metadata: dict[str, Any]
    multitask_strategy: str
    kwargs: dict[str, Any]
    graph_id: str
    kind: Literal["input", "resume", "replay"]
    attempts: int
    retries: int
    error: str | None
    correlation_id: str | None
    created_by: str | None
    worker: str | None
    lease_expiries: int = 0
    """Times the run's lease expired (its worker died or hung) and another worker took it over."""
    dead_reason: Literal["retries_exhausted", "lease_expired_repeatedly"] | None = None
    """Why a ``dead`` run was dead-lettered."""
    versions: dict[str, dict[str, str]] | None = None
    """What its latest attempt ran with: ``graph``, ``policy_pack``, ``prompts``, ``tool_contracts``,
    ``model_routing``, each ``{"version", "sha256"}`` (engine.versions); None before a worker took it."""


class ApprovalSummary(_Out):
    thread_id: str
    tenant: str
    requester: str | None
    ticket_id: str | None
    route: str | None
    plan_hash: str | None
    plan: list[dict[str, Any]] | None
    waiting_since: str
    can_decide: bool
    """Whether the caller may approve or reject it under the policy pack's ``[approvals]``."""
    refusal: dict[str, str] | None
    """When not: ``{code, detail}`` (``not_an_approver``, ``separation_of_duties``)."""


class ApprovalPage(_Out):
    items: list[ApprovalSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None
    rules: dict[str, Any]
    """The pack's ``[approvals]`` in force: approver_roles, separation_of_duties, edits_only_downward."""


class ApprovalDetail(ApprovalSummary):
    policy_version: str | None
    policy_checks: list[dict[str, Any]]
    evidence: list[Any]
    preview: list[dict[str, Any]]
    error: Any
    request: dict[str, Any]


class DecisionOut(_Out):
    thread_id: str
    decision: Literal["approve", "reject"]
    plan_hash: str
    reviewer: str
    idempotent_replay: bool
    result: dict[str, Any] | None = None
    """With ``wait``: the thread's values after the resumed run."""
    run: RunOut


class AuditRowOut(AuditRow, _Out):
    """An audit row as stored (:class:`keel.audit.AuditRow`)."""


class AuditPage(_Out):
    items: list[AuditRowOut]
    limit: int
    offset: int


class ThreadAuditPage(AuditPage):
    thread_id: str


class ChainReportOut(_Out):
    tenant: str
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None


class TicketOut(_Out):
    thread_id: str
    ticket_id: str
    result: dict[str, Any] | None = None
    """With ``wait``: the run's result (``__interrupt__`` when it waits for approval)."""
    run: RunOut


class ReplayOut(_Out):
    thread_id: str
    run: RunOut
    forked: bool
    result: dict[str, Any] | None = None


class FixturesOut(_Out):
    tenant: str
    loaded: dict[str, int]


class DeadLetterPage(_Out):
    items: list[RunOut]
    limit: int
    offset: int


class AssistantSearch(Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


class AssistantCount(Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)


class ThreadCreate(Body):
    thread_id: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    supersteps: list[dict[str, Any]] | None = None
    ttl: dict[str, Any] | None = None

    @field_validator("supersteps")
    @classmethod
    def _no_supersteps(cls, v: Any) -> Any:
        if v:
            raise ValueError("supersteps are not supported: threads start from a run's input")
        return v

    @field_validator("thread_id")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        return _check_uuid(v)


def _check_uuid(v: str | None) -> str | None:
    if v is None:
        return v
    import uuid

    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise ValueError("must be a UUID") from None


class ThreadPatch(Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: dict[str, Any] | None = None


class ThreadSearch(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[str] | None = Field(default=None, max_length=1000)
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None
    extract: dict[str, str] | None = None

    @field_validator("values", "extract")
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v:
            raise ValueError("filtering on values and extract are not supported; filter on metadata or status")
        return v


class ThreadCount(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None


class CheckpointRef(Body):
    thread_id: str | None = None
    checkpoint_ns: str | None = ""
    checkpoint_id: str | None = None
    checkpoint_map: dict[str, Any] | None = None


class StateCheckpointRequest(Body):
    checkpoint: CheckpointRef
    subgraphs: bool = False
    select: list[str] | None = None


class ThreadStateUpdate(Body):
    """``POST /threads/{id}/state`` (langgraph-sdk's ``threads.update_state``)."""

    values: dict[str, Any] | None = None
    as_node: str | None = Field(default=None, min_length=1, max_length=256)
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = None


class ThreadCopyOut(_Out):
    thread_id: str


class HistoryRequest(Body):
    limit: int = Field(default=10, ge=1, le=1000)
    before: str | CheckpointRef | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointRef | None = None
    select: list[str] | None = None


class RunConfig(Body):
    """A run's ``config`` (LangGraph's ``RunnableConfig`` keys langgraph-sdk may send).

    Only ``recursion_limit`` changes how keel runs the graph; the others are accepted with
    their types checked and not used (nodes read identity and clock from the config keel
    builds, so a client's ``configurable`` is never passed on). A value that would only
    fail once a worker runs the graph (a limit of 0 or -1, a string, ``true``) is refused
    here, so a bad request never becomes a failed run."""

    recursion_limit: int | None = Field(default=None, ge=1, le=MAX_RECURSION_LIMIT, strict=True)
    """Most supersteps the run may take before it fails with ``GraphRecursionError``."""
    configurable: dict[str, Any] | None = None
    tags: list[str] | None = Field(default=None, max_length=64)
    metadata: dict[str, Any] | None = None
    run_name: str | None = Field(default=None, max_length=256)
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000, strict=True)
    run_id: str | None = Field(default=None, max_length=128)


class RunCreate(Body):
    """``POST /threads/{id}/runs``, ``/runs/wait`` and ``/runs/stream`` (langgraph-sdk's payload)."""

    assistant_id: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    stream_mode: StreamModeName | list[StreamModeName] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    metadata: dict[str, Any] | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = None
    checkpoint_during: bool | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    feedback_keys: list[str] | None = None
    webhook: str | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    if_not_exists: Literal["reject", "create"] | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None
    on_completion: Literal["delete", "keep"] | None = None
    after_seconds: float | None = Field(default=None, ge=0, le=86_400)
    durability: Literal["sync", "async", "exit"] | None = None
    strict_resume: bool | None = None
    langsmith_tracer: dict[str, Any] | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            unknown = set(v) - {"resume", "update", "goto"}
            if unknown:
                raise ValueError(f"unknown command keys: {', '.join(sorted(unknown))}")
            if not v:
                raise ValueError("empty command")
        return v

    @field_validator("webhook")
    @classmethod
    def _no_webhook(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("webhooks are not supported; poll the run or join it")
        return v

    def run_config(self) -> dict[str, Any] | None:
        """The validated ``config`` as the plain dict stored with the run (unset keys left out)."""
        return self.config.model_dump(exclude_none=True) if self.config is not None else None

    def modes(self, default: list[str]) -> list[str]:
        """The requested stream modes, each once, in the order asked (422 for a mode keel does not produce)."""
        if self.stream_mode is None:
            return default
        modes = [self.stream_mode] if isinstance(self.stream_mode, str) else list(self.stream_mode)
        bad = [m for m in modes if m not in SUPPORTED_STREAM_MODES]
        if bad:
            raise http_error(422, "unsupported_stream_mode", f"stream modes {bad} are not supported; use "
                             f"{', '.join(SUPPORTED_STREAM_MODES)}")
        return list(dict.fromkeys(modes))


class _Decision(Body):
    plan_hash: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")
    """Hash of the plan the reviewer saw."""
    reason: str = Field(default="", max_length=2_000)
    """Why, for the audit trail."""
    wait: bool = True
    """Wait for the resumed run to finish (else return as soon as it is queued)."""


class ApproveBody(_Decision):
    """Approve the plan as shown."""


class RejectBody(_Decision):
    """Reject the plan; the run ends ``rejected``."""

    reason: str = Field(min_length=1, max_length=2_000)


class ActionEditBody(Body):
    index: int = Field(ge=0, le=7)
    """Position of the action in the plan."""
    args: dict[str, Any]
    """Changed arguments, merged over the originals (only downward)."""


class EditBody(_Decision):
    """Edit arguments downward, then approve the edited plan."""

    edits: list[ActionEditBody] = Field(min_length=1, max_length=8)


class ReplayBody(Body):
    """Replay a thread from one of its checkpoints, or fork a new thread from it."""

    checkpoint_id: str = Field(min_length=1, max_length=128)
    fork: bool = False
    """False: re-execute on the same thread from the checkpoint (a new branch of its
    history). True: copy the checkpoint into a new thread and continue there."""
    wait: bool = False
    metadata: dict[str, Any] | None = None


class TicketCreate(Body):
    """Start the support workflow on a ticket: a new thread and a background run."""

    ticket: Ticket
    metadata: dict[str, Any] | None = None
    wait: bool = False
    """Wait for the run to finish or pause, and return its result."""


# -- store (LangGraph's /store API) --------------------------------------------------------
_Label = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^.]+$")]
"""A namespace label (LangGraph's rule: no periods)."""


class StorePut(Body):
    """``PUT /store/items``."""

    namespace: list[_Label] = Field(min_length=1, max_length=16)
    key: str = Field(min_length=1, max_length=1024)
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None
    ttl: float | None = Field(default=None, gt=0, le=525_600)
    """Minutes the item lives after its last write (or read); none: until deleted."""


class StoreDelete(Body):
    """``DELETE /store/items``."""

    namespace: list[_Label] = Field(min_length=1, max_length=16)
    key: str = Field(min_length=1, max_length=1024)


class StoreSearch(Body):
    """``POST /store/items/search``."""

    namespace_prefix: list[_Label] = Field(default_factory=list, max_length=16)
    filter: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    query: str | None = Field(default=None, max_length=10_000)
    refresh_ttl: bool | None = None


class StoreNamespaces(Body):
    """``POST /store/namespaces``."""

    prefix: list[_Label] | None = Field(default=None, max_length=16)
    suffix: list[_Label] | None = Field(default=None, max_length=16)
    max_depth: int | None = Field(default=None, ge=1, le=16)
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class StoreItemOut(_Out):
    namespace: list[str]
    key: str
    value: dict[str, Any]
    created_at: str
    updated_at: str


# -- crons (LangGraph's /runs/crons) ---------------------------------------------------------
class CronCreate(Body):
    """``POST /runs/crons`` and ``POST /threads/{id}/runs/crons`` (langgraph-sdk's payload)."""

    assistant_id: str = Field(min_length=1, max_length=128)
    schedule: str = Field(min_length=9, max_length=256)
    """Five cron fields: minute hour day-of-month month day-of-week."""
    timezone: str | None = Field(default=None, max_length=64)
    input: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    end_time: datetime | None = None
    enabled: bool | None = None
    on_run_completed: Literal["delete", "keep"] | None = None
    stream_mode: StreamModeName | list[StreamModeName] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    checkpoint_during: bool | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    webhook: str | None = None

    @field_validator("webhook")
    @classmethod
    def _no_webhook(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("webhooks on crons are not supported; poll the cron's runs")
        return v

    @field_validator("end_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("end_time needs a UTC offset")
        return v


class CronSearch(Body):
    """``POST /runs/crons/search``."""

    assistant_id: str | None = Field(default=None, max_length=128)
    thread_id: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    sort_by: Literal["cron_id", "assistant_id", "thread_id", "created_at", "updated_at", "next_run_date",
                     "end_time"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None
    metadata: dict[str, Any] | None = None


class CronCount(Body):
    """``POST /runs/crons/count``."""

    assistant_id: str | None = Field(default=None, max_length=128)
    thread_id: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None


class CronOut(_Out):
    cron_id: str
    assistant_id: str
    thread_id: str | None
    schedule: str
    timezone: str | None
    end_time: str | None
    created_at: str
    updated_at: str
    payload: dict[str, Any]
    user_id: str | None
    next_run_date: str | None
    metadata: dict[str, Any]
    enabled: bool


# -- assistants (create, patch, versions) ---------------------------------------------------
class AssistantCreate(Body):
    """``POST /assistants`` (langgraph-sdk's payload)."""

    graph_id: str = Field(min_length=1, max_length=128)
    assistant_id: str | None = Field(default=None, max_length=64)
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=4_000)


class AssistantPatch(Body):
    """``PATCH /assistants/{id}``: a new version with these fields changed (metadata merged)."""

    graph_id: str | None = Field(default=None, min_length=1, max_length=128)
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=4_000)


class AssistantVersions(Body):
    """``POST /assistants/{id}/versions``."""

    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class AssistantLatest(Body):
    """``POST /assistants/{id}/latest``."""

    version: int = Field(ge=1, le=2**31 - 1)
