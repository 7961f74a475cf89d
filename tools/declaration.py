"""A tool is declared once: :func:`tool` turns a function into a :class:`ToolDecl`.

Why one declaration: the runner, the planner's prompt, the policy engine, VERIFY and the
reviewer's preview all need facts about a tool. Each used to keep its own table, so adding
a tool touched nine files and a forgotten one failed open. Now everything reads the
declaration (through :mod:`tools.registry`), and a declaration that lacks what a
side-effecting tool needs is refused when its module is imported.

How to add a tool (``tools/catalog/<group>.py``, one module per tool group; modules in
``tools/catalog`` are found by :mod:`tools.registry` on their own)::

    from pydantic import Field

    from tools.contracts import RecordId, ToolEnv, ToolError, ToolInput
    from tools.declaration import RecordChange, Verify, tool
    from keel.types import StrictModel

    class GiftNoteInput(ToolInput):
        \"\"\"Attach a gift note to an order that has not shipped.\"\"\"   # first line: the planner's description
        order_id: RecordId
        note: str = Field(min_length=1, max_length=200)

    class GiftNoteOutput(StrictModel):
        \"\"\"The note attached.\"\"\"
        order_id: str
        note: str

    def _read(bo, tenant, args: GiftNoteInput) -> dict | None:       # what VERIFY re-reads
        return bo.get_order(tenant, args.order_id)

    def _preview(bo, tenant, args: GiftNoteInput) -> list[RecordChange]:   # before -> after, for a reviewer
        order = bo.get_order(tenant, args.order_id)
        return [RecordChange.of("order", order, gift_note=args.note)]

    @tool(side_effect=True, operation="gift_note", routes=("orders",),
          verify=Verify(read=_read, holds=lambda rec, args, out: rec["gift_note"] == args.note),
          preview=_preview)
    def add_gift_note(bo, tx, env: ToolEnv, args: GiftNoteInput) -> GiftNoteOutput:
        \"\"\"One transaction; raise ToolError(code, message) to refuse.\"\"\"
        ...

then give it a rule in the policy pack (``guards/policies/*.toml``): allowlist it on a route
and state its decision (``[tools.add_gift_note] decision = "approve"``), or give it one of
the pack's own rule sections. A side-effecting tool the pack states no rule for is denied
(``no_policy_rule``), never executed.

What a declaration carries, and who reads it:

- ``name``: the function's name (the pack's allowlists name it); ``input_model`` /
  ``output_model``: the annotations of ``args`` and of the return value (strict pydantic
  models; the input's docstring's first line is the planner's description). Runner,
  plan validation (``nodes.propose``), the planner prompt (``cards()``).
- ``side_effect``: idempotency key and ledger (runner), policy default-deny and injection
  escalation (``guards.policy`` through the cards), execute's keys.
- ``operation`` / ``routes``: the operation the tool carries out and the routes it serves:
  the local planner's choice of tool (``gateway.local`` through the cards).
- ``verify``: :class:`Verify`: what VERIFY re-reads after the call and what must then hold
  (``nodes.verify`` through ``registry.verify_action``). Required with a side effect.
- ``preview``: ``fn(backoffice, tenant, args) -> list[RecordChange]``: the records the call
  would change, before and after, for a reviewer (approvals API through
  ``registry.preview_actions``). Required with a side effect.
- ``cache_ttl_s`` / ``cache_scope``: a read-only tool's results may be reused this long
  (:mod:`tools.cache`), per tenant and, with scope ``customer`` (the default), per ticket
  customer; any side effect on that customer's records, or a fixtures load of the tenant,
  invalidates them. Unset: never cached. Refused on a side-effecting tool.

Registering: shipped tools are found in ``tools/catalog``; a tool declared elsewhere (a test,
a plug-in) is added with :func:`tools.registry.register` (and removed with ``unregister``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, Field

from keel.errors import ConfigError
from keel.db import Tx
from keel.types import StrictModel, ToolCard

from .backoffice import BackOffice
from .contracts import ToolEnv

__all__ = ["ToolFn", "ReadFn", "PreviewFn", "Verify", "RecordChange", "ToolDecl", "DeclarationError", "tool",
           "CacheScope"]

ToolFn = Callable[..., BaseModel]
"""``fn(backoffice, tx, env, args) -> output``: one transaction, may raise ToolError."""

ReadFn = Callable[..., "dict[str, Any] | None"]
"""``read(backoffice, tenant, args) -> record``: a store read (not a tool call); None: not found."""

PreviewFn = Callable[..., "list[RecordChange]"]
"""``preview(backoffice, tenant, args) -> changes``: what the call would change, not changing it."""

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")

CacheScope = Literal["customer", "tenant"]
"""Whose data a cached read holds: the ticket customer's records, or the tenant's (its knowledge base)."""


class DeclarationError(ConfigError, TypeError):
    """A tool declaration that cannot be used (missing model, verify or preview, bad name)."""


@dataclass(frozen=True)
class Verify:
    """What VERIFY re-reads after a side effect and what must hold of the fresh record.

    A tool saying "done" is not proof: ``read`` reads the back office again (a store read,
    outside the tool runner), and ``holds(record, args, output)`` compares it with what the
    call meant to do (``args``: the validated input model, ``output``: the output model).
    """

    read: ReadFn
    holds: Callable[[dict[str, Any], Any, Any], bool]


class RecordChange(StrictModel):
    """One record a call would change, as a reviewer sees it: before → after.

    ``before`` None: the call creates the record; ``after`` holds only the fields that
    change (and is the whole new record when one is created).
    """

    kind: str
    """Record kind (``order``, ``refund``, ``account``, …)."""
    id: str | None = None
    """Record id; None for a record the call would create (its id is derived on execution)."""
    before: dict[str, Any] | None = None
    """The record now (None: it does not exist yet, or was not found)."""
    after: dict[str, Any] = Field(default_factory=dict)
    """The fields the call sets."""

    @classmethod
    def of(cls, kind: str, record: Mapping[str, Any] | None, **after: Any) -> RecordChange:
        """An update of ``record``'s fields ``after`` (``before`` keeps only those fields and the id)."""
        before = None if record is None else {k: record.get(k) for k in ("id", *after) if k in record}
        rid = None if record is None else record.get("id")
        return cls(kind=kind, id=None if rid is None else str(rid), before=before, after=dict(after))

    @classmethod
    def new(cls, kind: str, **fields: Any) -> RecordChange:
        """A record the call would create."""
        return cls(kind=kind, id=None, before=None, after=dict(fields))


@dataclass(frozen=True)
class ToolDecl:
    """Everything about one tool, in one place (see the module docstring)."""

    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: ToolFn
    side_effect: bool
    operation: str | None = None
    routes: tuple[str, ...] = ()
    verify: Verify | None = None
    preview: PreviewFn | None = None
    module: str = ""
    """Module that declared it (error messages)."""
    cache_ttl_s: float | None = None
    """Seconds a result of this read may be reused (:mod:`tools.cache`); None: never cached."""
    cache_scope: CacheScope = "customer"
    """What a cached result depends on, besides its arguments: the ticket customer, or only the tenant."""

    def __post_init__(self) -> None:
        where = f"tool {self.name!r} ({self.module or '?'})"
        if not _NAME.match(self.name):
            raise DeclarationError(f"{where}: name must be lower_snake_case, 2-64 characters")
        for label, model in (("input", self.input_model), ("output", self.output_model)):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise DeclarationError(f"{where}: {label} model must be a pydantic model")
        if self.input_model.model_config.get("extra") != "forbid":
            raise DeclarationError(f"{where}: the input model must reject unknown fields (subclass ToolInput)")
        if not self.description:
            raise DeclarationError(f"{where}: the input model needs a docstring (the planner's description)")
        if self.side_effect and self.verify is None:
            raise DeclarationError(f"{where}: a side-effecting tool must say what VERIFY re-reads (verify=)")
        if self.side_effect and self.preview is None:
            raise DeclarationError(f"{where}: a side-effecting tool must say how a reviewer previews it (preview=)")
        if self.operation is not None and not self.routes:
            raise DeclarationError(f"{where}: a tool carrying an operation must name its route(s)")
        if self.cache_ttl_s is not None and (self.side_effect or not self.cache_ttl_s > 0):
            raise DeclarationError(f"{where}: only a read-only tool may be cached, for a positive cache_ttl_s")
        if self.cache_scope not in ("customer", "tenant"):
            raise DeclarationError(f"{where}: cache_scope must be 'customer' or 'tenant'")

    @property
    def description(self) -> str:
        """One line for a planner prompt: what the tool does (the input model's docstring)."""
        doc = (self.input_model.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @functools.cached_property
    def card(self) -> ToolCard:
        """The facts guards and the gateway read (:class:`keel.types.ToolCard`); built once per
        declaration (a frozen model: the planner asks for the cards on every proposal, and the
        input model's JSON schema costs more to generate than the rest of the node)."""
        return ToolCard(name=self.name, description=self.description, side_effect=self.side_effect,
                        operation=self.operation, routes=self.routes,
                        input_schema=self.input_model.model_json_schema())

    def __call__(self, bo: BackOffice, tx: Tx, env: ToolEnv, args: BaseModel) -> BaseModel:
        """Run the implementation (the runner calls this inside its transaction)."""
        return self.fn(bo, tx, env, args)


def tool(
    *,
    side_effect: bool,
    operation: str | None = None,
    routes: tuple[str, ...] = (),
    verify: Verify | None = None,
    preview: PreviewFn | None = None,
    name: str | None = None,
    cache_ttl_s: float | None = None,
    cache_scope: CacheScope = "customer",
) -> Callable[[ToolFn], ToolDecl]:
    """Declare ``fn(backoffice, tx, env, args: Input) -> Output`` as a tool.

    The models are read from the annotations of ``args`` and of the return value, so they
    are written once, where the function is. The result is the :class:`ToolDecl` (the
    module-level name becomes the declaration); :mod:`tools.registry` collects it.
    """

    def wrap(fn: ToolFn) -> ToolDecl:
        try:
            hints = get_type_hints(fn)
        except Exception as e:  # an annotation that does not resolve
            raise DeclarationError(f"tool {fn.__name__!r}: cannot read its annotations: {e}") from None
        if "args" not in hints or "return" not in hints:
            raise DeclarationError(f"tool {fn.__name__!r}: annotate `args: InputModel` and the return model")
        return ToolDecl(
            name=name or fn.__name__, input_model=hints["args"], output_model=hints["return"], fn=fn,
            side_effect=side_effect, operation=operation, routes=tuple(routes), verify=verify, preview=preview,
            module=fn.__module__, cache_ttl_s=cache_ttl_s, cache_scope=cache_scope,
        )

    return wrap
