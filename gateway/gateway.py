"""The model gateway: one interface for triage, extraction and planning.

Graph nodes call :class:`ModelGateway`; it tries each configured provider in order and
returns the first output that validates. Output is never trusted as produced: it is
re-validated against the task's pydantic schema and then checked against the task's
input (an extracted operation must belong to the route, ids must appear in the ticket or
context, a plan may use only allowlisted tools). Anything else falls through to the next
provider, and when none is left the gateway raises :class:`ModelError` with a message
safe to store and show.

Every attempt yields a :class:`GatewayCall` (task, provider, ok, tokens, ms, error),
passed to the gateway's ``on_call`` hook and to a per-call hook, so the caller can audit,
trace and charge the tenant's token budget. A hook that raises stops the task (how a
budget hook refuses more spending). The tokens are what a model provider reported, or an
estimate when it reported none (a model call is never free); a provider that calls no
model (``charges_tokens = False``, the local rules) is charged nothing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from keel.config import Settings
from gateway.base import (
    OPERATION_ROUTE,
    ROUTE_OPERATIONS,
    GatewayCall,
    InvalidOutput,
    ModelError,
    ModelProvider,
    PlanningInput,
    Task,
    Usage,
)
from gateway.local import LocalProvider
from gateway.openai_provider import OpenAIProvider
from gateway.prompts import system_prompt
from keel.types import Extraction, PlanProposal, Route, Ticket, TriageResult

__all__ = ["ModelGateway", "GatewayResult", "CallHook", "gateway_from_settings", "provider_from_name",
           "estimate_tokens", "charged_tokens"]

log = logging.getLogger("gateway")

CallHook = Callable[[GatewayCall], None]
"""Receives every :class:`GatewayCall` as soon as the attempt ends."""

T = TypeVar("T", bound=BaseModel)

_ORDER_ID = re.compile(r"\bO-\d+\b", re.IGNORECASE)
_SUB_ID = re.compile(r"\bS-\d+\b", re.IGNORECASE)
_ID_ARGS = ("order_id", "subscription_id", "customer_id")


@dataclass(frozen=True)
class GatewayResult(Generic[T]):
    """A validated output and every attempt it took (failed fallbacks first)."""

    value: T
    calls: list[GatewayCall] = field(default_factory=list)


class ModelGateway:
    """Validated model calls with provider fallback and per-call accounting."""

    def __init__(self, providers: Sequence[ModelProvider], *, on_call: CallHook | None = None) -> None:
        if not providers:
            raise ValueError("a gateway needs at least one provider")
        self.providers: tuple[ModelProvider, ...] = tuple(providers)
        self.on_call = on_call

    @property
    def provider_names(self) -> list[str]:
        """Providers in the order they are tried."""
        return [p.name for p in self.providers]

    # -------------------------------------------------------------- the three tasks
    def triage(self, ticket: Ticket, *, on_call: CallHook | None = None) -> TriageResult:
        """Route a ticket."""
        payload = {"ticket": ticket.model_dump(mode="json")}
        return self.run("triage", TriageResult, payload, on_call=on_call).value

    def extract(self, ticket: Ticket, route: Route, *, on_call: CallHook | None = None) -> Extraction:
        """Extract the facts of the ticket's main operation within ``route``."""
        payload = {
            "ticket": ticket.model_dump(mode="json"),
            "route": route,
            "operations": list(ROUTE_OPERATIONS[route]),
        }

        def check(value: Extraction) -> None:
            _check_extraction(value, ticket, route)

        return self.run("extract", Extraction, payload, check=check, on_call=on_call).value

    def plan(self, planning: PlanningInput, *, on_call: CallHook | None = None) -> PlanProposal:
        """Propose actions for an extraction, within the route's allowlist."""
        payload = planning.model_dump(mode="json")

        def check(value: PlanProposal) -> None:
            _check_plan(value, planning)

        return self.run("plan", PlanProposal, payload, check=check, on_call=on_call).value

    # -------------------------------------------------------------- the engine
    def run(
        self,
        task: Task,
        schema: type[T],
        payload: dict[str, Any],
        *,
        check: Callable[[T], None] | None = None,
        on_call: CallHook | None = None,
    ) -> GatewayResult[T]:
        """Try each provider until one returns output that validates and passes ``check``."""
        system = system_prompt(task)
        calls: list[GatewayCall] = []
        for provider in self.providers:
            started = time.perf_counter()
            tokens_in = tokens_out = 0
            value: T | None = None
            error: str | None = None
            try:
                raw, usage = provider.complete(task, schema, system, payload)
                tokens_in, tokens_out = charged_tokens(provider, usage, system, payload, raw)
                value = _validate(schema, raw)
                if check is not None:
                    check(value)
            except (ValidationError, InvalidOutput, TypeError) as exc:
                error = "invalid_output"
                value = None
                log.warning("provider %s gave invalid %s output (%s)", provider.name, task, type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - any provider failure means "try the next"
                error = f"provider_error:{type(exc).__name__}"
                value = None
                log.warning("provider %s failed on %s (%s)", provider.name, task, type(exc).__name__)
            call = GatewayCall(
                task=task,
                provider=provider.name,
                ok=value is not None,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                ms=round((time.perf_counter() - started) * 1000, 3),
                error=error,
            )
            calls.append(call)
            self._emit(call, on_call)
            if value is not None:
                return GatewayResult(value=value, calls=calls)
        raise ModelError(task, calls)

    def _emit(self, call: GatewayCall, on_call: CallHook | None) -> None:
        for hook in (self.on_call, on_call):
            if hook is not None:
                hook(call)


# ------------------------------------------------------------------ charging
def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters a token) for a model that reports no usage."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(raw: Any) -> str:
    if isinstance(raw, BaseModel):
        return raw.model_dump_json()
    return raw if isinstance(raw, str) else json.dumps(raw, default=str)


def charged_tokens(provider: ModelProvider, usage: Usage, system: str, payload: dict[str, Any], raw: Any) -> tuple[int, int]:
    """``(tokens_in, tokens_out)`` to charge for one answered call.

    Nothing for a provider that calls no model (``charges_tokens = False``): charging the
    deterministic rules made an offline tenant's day run out after ~150 runs. A model's
    own report when it gave one; else an estimate of what it read (system prompt and
    payload) and wrote, since a real call is never free and an endpoint that omits usage
    must not make spending invisible to the budget.
    """
    if not getattr(provider, "charges_tokens", True):
        return 0, 0
    if usage.tokens_in or usage.tokens_out:
        return usage.tokens_in, usage.tokens_out
    return (estimate_tokens(system) + estimate_tokens(json.dumps(payload, default=str)),
            estimate_tokens(_text_of(raw)))


# ------------------------------------------------------------------ validation
def _validate(schema: type[T], raw: Any) -> T:
    """Re-validate whatever the provider returned; an instance is dumped and re-checked,
    since it could have been built with ``model_construct`` and skipped validation."""
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        raise TypeError("provider output is not an object")
    return schema.model_validate(raw)


def _ids_in(text: str) -> set[str]:
    return {m.group(0).upper() for rx in (_ORDER_ID, _SUB_ID) for m in rx.finditer(text)}


def _check_extraction(value: Extraction, ticket: Ticket, route: Route) -> None:
    """The operation must belong to the route; ids and the email must be in the ticket."""
    if route != "unknown" and OPERATION_ROUTE.get(value.operation) != route:
        raise InvalidOutput("operation outside the route")
    text = f"{ticket.subject}\n{ticket.body}"
    written = _ids_in(text)
    for ident in (value.order_id, value.subscription_id):
        if ident is not None and ident.upper() not in written:
            raise InvalidOutput("id not present in the ticket")
    if value.new_email is not None and value.new_email.lower() not in text.lower():
        raise InvalidOutput("email not present in the ticket")


def _known_ids(planning: PlanningInput) -> set[str]:
    known = _ids_in(f"{planning.ticket.subject}\n{planning.ticket.body}")
    known.add(planning.ticket.customer_id.upper())
    records: Iterable[dict[str, Any]] = [*planning.orders, *planning.subscriptions, *planning.named_orders.values()]
    known.update(str(r.get("id", "")).upper() for r in records)
    known.update(k.upper() for k in planning.named_orders)
    if planning.customer and planning.customer.get("id"):
        known.add(str(planning.customer["id"]).upper())
    return known


def _check_plan(value: PlanProposal, planning: PlanningInput) -> None:
    """Every tool allowlisted; every id argument seen in the ticket or the context."""
    known = _known_ids(planning)
    for action in value.actions:
        if action.tool not in planning.allowlist:
            raise InvalidOutput("tool outside the allowlist")
        for key in _ID_ARGS:
            ident = action.args.get(key)
            if ident is not None and str(ident).upper() not in known:
                raise InvalidOutput("id not present in the ticket or context")


# ------------------------------------------------------------------ construction
def provider_from_name(name: str, settings: Settings) -> ModelProvider:
    """Build a provider by its settings name (``local`` or ``openai``)."""
    if name == "local":
        return LocalProvider()
    if name == "openai":
        return OpenAIProvider(
            model=settings.openai_model,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=settings.model_timeout_s,
        )
    raise ValueError(f"unknown model provider {name!r}")


def gateway_from_settings(settings: Settings, *, on_call: CallHook | None = None) -> ModelGateway:
    """The gateway the settings describe: ``model_provider`` first, then ``model_fallbacks``
    (duplicates dropped, order kept)."""
    names = list(dict.fromkeys([settings.model_provider, *settings.model_fallbacks]))
    return ModelGateway([provider_from_name(n, settings) for n in names], on_call=on_call)
