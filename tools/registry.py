"""The tool registry: every declared tool, and what the rest of keel reads from the declarations.

How to declare a tool: see :mod:`tools.declaration` (a function with the :func:`~tools.declaration.tool`
decorator, in a module of ``tools/catalog``, plus its rule in the policy pack).

Why a registry: the runner, plan validation, the planner's prompt, the policy engine,
VERIFY and the approvals preview all read the same declarations from here instead of
keeping tables of their own. Every module of the ``tools.catalog`` package is imported on
first use and each :class:`~tools.declaration.ToolDecl` it defines at module level is
registered, so adding a tool is adding a module. A tool declared anywhere else (a test's
toy tool, a plug-in) is added with :func:`register`.

Read it through:

- ``TOOLS`` / :func:`get`: the declarations by name (the runner, ``nodes.propose``);
- :func:`cards`: :class:`keel.types.ToolCard` of each tool, for the layers that may not
  import the tools: ``guards.policy.PolicyEngine(pack, cards())`` and the planner's
  ``PlanningInput.tools``;
- :func:`side_effect_tools`, :func:`tool_schemas`;
- :func:`verify_action` (VERIFY) and :func:`preview_actions` (the approvals preview).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from keel.types import ToolCard

from .declaration import DeclarationError, RecordChange, ToolDecl

__all__ = [
    "TOOLS",
    "ToolSpec",
    "Registry",
    "get",
    "register",
    "unregister",
    "cards",
    "side_effect_tools",
    "side_effect_operations",
    "tool_schemas",
    "verify_action",
    "preview_actions",
]

logger = logging.getLogger("keel.tools")

CATALOG_PACKAGE = "tools.catalog"
"""The package whose modules hold the shipped declarations."""

ToolSpec = ToolDecl
"""Former name of :class:`~tools.declaration.ToolDecl` (the runner's fault hooks name it)."""


class _Registry(Mapping[str, ToolDecl]):
    """Declarations by name; the catalog is imported lazily, once, on first read."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolDecl] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            package = importlib.import_module(CATALOG_PACKAGE)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    self._add_module(importlib.import_module(f"{CATALOG_PACKAGE}.{info.name}"))
            self._loaded = True

    def _add_module(self, module: ModuleType) -> list[ToolDecl]:
        found = [v for v in vars(module).values() if isinstance(v, ToolDecl) and v.module == module.__name__]
        for decl in found:
            self._add(decl)
        return found

    def _add(self, decl: ToolDecl) -> None:
        prior = self._tools.get(decl.name)
        if prior is not None and prior is not decl:
            raise DeclarationError(f"tool {decl.name!r} is declared twice ({prior.module} and {decl.module})")
        self._tools[decl.name] = decl

    def __getitem__(self, name: str) -> ToolDecl:
        self._load()
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._tools))

    def __len__(self) -> int:
        self._load()
        return len(self._tools)


TOOLS = _Registry()
"""Every declared tool by name (read-only; add with :func:`register`)."""


def get(name: str) -> ToolDecl | None:
    """The declaration of ``name``, or None for an unknown tool."""
    return TOOLS.get(name)


def register(*items: ToolDecl | ModuleType) -> list[ToolDecl]:
    """Add declarations, or every module-level declaration of the modules given.

    A name declared twice is refused (:class:`~tools.declaration.DeclarationError`).
    """
    TOOLS._load()
    added: list[ToolDecl] = []
    with TOOLS._lock:
        for item in items:
            if isinstance(item, ToolDecl):
                TOOLS._add(item)
                added.append(item)
            else:
                added.extend(TOOLS._add_module(item))
    return added


def unregister(*names: str) -> None:
    """Remove tools by name (a test's toy tool); unknown names are ignored."""
    TOOLS._load()
    with TOOLS._lock:
        for name in names:
            TOOLS._tools.pop(name, None)


Registry = Mapping[str, ToolDecl]
"""Declarations by name: ``TOOLS``, or a workflow's own (e.g. ``tools.supply.SUPPLY_TOOLS``);
every reader below takes ``registry=`` and defaults to ``TOOLS``."""


def cards(names: Iterable[str] | None = None, registry: Registry | None = None) -> dict[str, ToolCard]:
    """The :class:`~keel.types.ToolCard` of every tool (or of ``names`` that are known)."""
    wanted = None if names is None else set(names)
    return {n: d.card for n, d in (registry or TOOLS).items() if wanted is None or n in wanted}


def side_effect_tools(registry: Registry | None = None) -> frozenset[str]:
    """Names of the tools that change a business system."""
    return frozenset(n for n, d in (registry or TOOLS).items() if d.side_effect)


def side_effect_operations(registry: Registry | None = None) -> frozenset[str]:
    """Operations carried out by a side-effecting tool (a plan for them would change a
    business system); the rest only read or answer."""
    return frozenset(d.operation for d in (registry or TOOLS).values() if d.side_effect and d.operation)


def tool_schemas(names: Iterable[str] | None = None, registry: Registry | None = None) -> dict[str, dict[str, Any]]:
    """JSON Schemas of the tools' inputs (all, or ``names``), e.g. for a planner prompt."""
    return {n: c.input_schema for n, c in cards(names, registry).items()}


def verify_action(bo: Any, tenant: str, tool: str, args: Mapping[str, Any],
                  output: Mapping[str, Any] | None, registry: Registry | None = None) -> bool | None:
    """VERIFY for one executed call: re-read its record and check what its declaration says
    must hold. None: the tool declares nothing to verify (a read). ``bo``: the store the
    declaration's read expects (``tools.backoffice.BackOffice`` for support's tools)."""
    decl = (registry or TOOLS).get(tool)
    if decl is None or decl.verify is None:
        return None
    try:
        typed_args = decl.input_model.model_validate(dict(args))
        typed_out = decl.output_model.model_validate(dict(output or {}))
    except ValidationError:
        return False  # a result that does not match its contract proves nothing
    record = decl.verify.read(bo, tenant, typed_args)
    return record is not None and bool(decl.verify.holds(record, typed_args, typed_out))


def preview_actions(bo: Any, tenant: str, plan: Sequence[Mapping[str, Any]],
                    registry: Registry | None = None) -> list[dict[str, Any]]:
    """For each action of a plan, the records it would change, before → after, for a reviewer.

    Each item: ``index``, ``tool``, ``change`` (the arguments), ``changes`` (a list of
    :class:`~tools.declaration.RecordChange` as JSON) and ``current`` (each changed
    record's present fields by kind). A preview is advisory: a failing read is reported on
    the item (``error``), never raised.
    """
    out: list[dict[str, Any]] = []
    for i, action in enumerate(plan or []):
        name = str(action.get("tool") or "")
        args = dict(action.get("args") or {})
        item: dict[str, Any] = {"index": i, "tool": name, "change": args, "changes": [], "current": {}}
        decl = (registry or TOOLS).get(name)
        try:
            if decl is None:
                item["error"] = "unknown_tool"
            elif decl.preview is not None:
                changes: list[RecordChange] = decl.preview(bo, tenant, decl.input_model.model_validate(args))
                item["changes"] = [c.model_dump(mode="json") for c in changes]
                item["current"] = {c.kind: c.before for c in changes if c.before is not None}
        except ValidationError:
            item["error"] = "invalid_arguments"
        except Exception as e:  # advisory: never fail the reviewer's request on a preview
            logger.warning("preview of %s failed: %s", name, type(e).__name__)
            item["error"] = type(e).__name__
        out.append(item)
    return out
