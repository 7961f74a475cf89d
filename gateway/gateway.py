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

A routing rule with ``cache_ttl_s`` lets an identical temperature-0 call of the same
tenant be answered from :mod:`gateway.cache` (a ``cached`` call, 0 tokens), re-validated
and re-checked like a fresh answer.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import jsonschema
from pydantic import BaseModel, ValidationError

from guards.pack import load_policy
from keel import metrics
from keel.config import Settings
from keel.errors import is_retryable, is_timeout
from gateway.base import (
    OPERATION_ROUTE,
    ROUTE_OPERATIONS,
    GatewayCall,
    InvalidOutput,
    ModelError,
    ModelProvider,
    TRIAGE_REASON_CODES,
    PlanningInput,
    Task,
    Usage,
)
from gateway.breaker import BREAKERS, BreakerBoard
from gateway.cache import CacheKey, ModelCache, call_digest
from gateway.local import LocalProvider
from gateway.minimize import Minimizer
from gateway.openai_provider import CallOptions, OpenAIProvider
from gateway.routing import GATEWAY_TASK, ModelSpec, RiskTier, RoutingTable, Rule, TaskLimits, chain_routing, load_routing
from gateway.rules import triage_text
from gateway.prompts import system_prompt
from gateway.streaming import stream_answer
from gateway.telemetry import trace_model_call
from keel.types import Extraction, PlanProposal, Route, Ticket, TriageResult

__all__ = ["ModelGateway", "GatewayResult", "CallHook", "gateway_from_settings", "provider_from_name",
           "estimate_tokens", "charged_tokens", "RemainingTokens"]

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

    @property
    def degraded(self) -> bool:
        """Answered by a fallback (an earlier model of the chain failed or was skipped)."""
        return bool(self.calls) and self.calls[-1].degraded


RemainingTokens = Callable[[str], int]
"""The tenant's remaining daily model tokens (``TenantTokenBudget.remaining`` bound to a clock)."""


class _Reservations:
    """Tokens promised to calls in flight, per tenant, in this process: a call is admitted
    only when its estimate (prompt + ``max_tokens``) fits in what is left after the others'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def take(self, tenant: str, tokens: int, remaining: int) -> bool:
        with self._lock:
            held = self._held.get(tenant, 0)
            if held + tokens > remaining:
                return False
            self._held[tenant] = held + tokens
            return True

    def release(self, tenant: str, tokens: int) -> None:
        with self._lock:
            self._held[tenant] = max(0, self._held.get(tenant, 0) - tokens)


RESERVATIONS = _Reservations()


class ModelGateway:
    """Validated model calls along a routing chain, with per-call accounting.

    Built from a list of providers (tried in order for every task) or from a routing
    table and its models (``gateway_from_settings``)."""

    def __init__(
        self,
        providers: Sequence[ModelProvider] = (),
        *,
        on_call: CallHook | None = None,
        routing: RoutingTable | None = None,
        models: dict[str, ModelProvider] | None = None,
        wall_clock_s: float | None = None,
        remaining: RemainingTokens | None = None,
        breakers: BreakerBoard = BREAKERS,
        cache: ModelCache | None = None,
    ) -> None:
        if routing is None:
            if not providers:
                raise ValueError("a gateway needs at least one provider")
            models = {p.name: p for p in providers}
            routing = chain_routing(list(models))
        elif not models:
            raise ValueError("a routing table needs its models")
        missing = sorted({m for r in routing.rules for m in r.chain} - set(models))
        if missing:
            raise ValueError(f"no provider for routed models {missing}")
        self.routing = routing.scaled_to(wall_clock_s) if wall_clock_s else routing
        self.models: dict[str, ModelProvider] = dict(models)
        self.providers: tuple[ModelProvider, ...] = tuple(models.values())
        self.on_call = on_call
        self.remaining = remaining
        self._remote = any(getattr(p, "charges_tokens", True) for p in self.providers)
        """Only a gateway that may call a model asks the budget (the local rules cost nothing)."""
        self.breakers = breakers
        self.cache = cache
        """Where identical temperature-0 calls are answered again (rules with ``cache_ttl_s`` only)."""

    @property
    def provider_names(self) -> list[str]:
        """Providers in the order the default rule tries them."""
        return [self.models[n].name for n in self.routing.rules[-1].chain]

    # -------------------------------------------------------------- the three tasks
    def triage(self, ticket: Ticket, *, on_call: CallHook | None = None) -> TriageResult:
        """Route a ticket. The model's route and confidence are used; whether the ticket
        carries several requests is decided by code (:func:`_decide_by_code`)."""
        payload = {"ticket": ticket.model_dump(mode="json")}
        result = self.run("triage", TriageResult, payload, check=_check_triage, on_call=on_call,
                          tenant=ticket.tenant).value
        return _decide_by_code(result, ticket)

    def extract(self, ticket: Ticket, route: Route, *, on_call: CallHook | None = None) -> Extraction:
        """Extract the facts of the ticket's main operation within ``route``."""
        payload = {
            "ticket": ticket.model_dump(mode="json"),
            "route": route,
            "operations": list(ROUTE_OPERATIONS[route]),
        }

        def check(value: Extraction) -> None:
            _check_extraction(value, ticket, route)

        return self.run("extract", Extraction, payload, check=check, on_call=on_call, tenant=ticket.tenant).value

    def plan(self, planning: PlanningInput, *, on_call: CallHook | None = None) -> PlanProposal:
        """Propose actions for an extraction, within the route's allowlist and each tool's schema."""
        payload = planning.model_dump(mode="json")

        def check(value: PlanProposal) -> None:
            _check_plan(value, planning)

        return self.run("plan", PlanProposal, payload, check=check, on_call=on_call, tenant=planning.ticket.tenant,
                        risk=_plan_risk(planning)).value

    # -------------------------------------------------------------- the engine
    def run(
        self,
        task: Task,
        schema: type[T],
        payload: dict[str, Any],
        *,
        check: Callable[[T], None] | None = None,
        on_call: CallHook | None = None,
        tenant: str | None = None,
        risk: RiskTier = "low",
        latency_ms: int | None = None,
    ) -> GatewayResult[T]:
        """Walk the chain the routing picks until a model returns output that validates
        and passes ``check``; every attempt is reported, with its cause when it failed."""
        routed = GATEWAY_TASK[task]
        remaining = self.remaining(tenant) if (self.remaining is not None and tenant and self._remote) else None
        rule = self.routing.select(routed, risk=risk, remaining=remaining, latency_ms=latency_ms)
        limits = self.routing.limits(routed)
        deadline = time.monotonic() + limits.deadline_s
        system = system_prompt(task)
        calls: list[GatewayCall] = []
        for position, name in enumerate(rule.chain):
            attempt = _Attempt(self, name, rule, position > 0, task, schema, system, payload, check, limits,
                               deadline, tenant, remaining)
            for call, value in attempt.tries():
                calls.append(call)
                self._emit(call, on_call)
                if value is not None:
                    provider = self.models[name]
                    # a LangChain model streamed itself, unless the answer came from the cache
                    if call.cached or not getattr(provider, "streams_callbacks", False):
                        stream_answer(task, provider.name, system, payload, value.model_dump(mode="json"))
                    return GatewayResult(value=value, calls=calls)
        raise ModelError(task, calls)

    def _emit(self, call: GatewayCall, on_call: CallHook | None) -> None:
        trace_model_call(call)  # a gen_ai span and the model metrics (gateway.telemetry)
        for hook in (self.on_call, on_call):
            if hook is not None:
                hook(call)


@dataclass
class _Attempt(Generic[T]):
    """One model of a chain at one task: its tries (retries on transport failures only)."""

    gw: ModelGateway
    name: str
    rule: Rule
    degraded: bool
    task: Task
    schema: type[T]
    system: str
    payload: dict[str, Any]
    check: Callable[[T], None] | None
    limits: TaskLimits
    deadline: float
    tenant: str | None
    remaining: int | None
    _answer: Any = field(default=None, init=False, repr=False)
    """The model's last answer as it came (references not yet restored): what the cache keeps."""

    def tries(self) -> Iterable[tuple[GatewayCall, T | None]]:
        provider = self.gw.models[self.name]
        spec = self.gw.routing.models.get(self.name)
        remote = getattr(provider, "charges_tokens", True)
        cacheable = self._cache_key(provider, spec) if remote else None
        if cacheable is not None:
            hit = self._from_cache(provider, spec, *cacheable)
            if hit is not None:
                yield hit
                return
        breaker = None
        if remote:
            identity = getattr(provider, "identity", provider.name)
            cfg = self.gw.routing.breaker
            breaker = self.gw.breakers.get(identity, failures=cfg.failures, cooldown_s=cfg.cooldown_s)
        tries = 1 + (self.limits.retries if remote else 0)
        for n in range(1, tries + 1):
            left = self.deadline - time.monotonic()
            if remote and left < 0.05:
                yield self._call(provider, spec, n, 0.0, 0, 0, "deadline_exceeded"), None
                return
            if breaker is not None and not breaker.allow():
                yield self._call(provider, spec, n, 0.0, 0, 0, "circuit_open"), None
                return
            call, value, transport_failed = self._once(provider, spec, n, remote, min(self.limits.timeout_s, left))
            if value is not None and cacheable is not None:
                self._to_cache(cacheable[0])
            if breaker is not None:
                if transport_failed:
                    breaker.failure()
                elif call.error != "budget_reserved":
                    breaker.success()
            yield call, value
            if value is not None or not transport_failed:
                return

    def _once(self, provider: ModelProvider, spec: ModelSpec | None, n: int, remote: bool,
              timeout: float) -> tuple[GatewayCall, T | None, bool]:
        started = time.perf_counter()
        minimizer = Minimizer() if remote else None
        sent = minimizer.minimize(self.payload) if minimizer else self.payload
        prompt_tokens = estimate_tokens(self.system) + estimate_tokens(json.dumps(sent, default=str)) if remote else 0
        reserve = prompt_tokens + self.limits.max_tokens if remote else 0
        if remote and self.remaining is not None and self.tenant:
            if not RESERVATIONS.take(self.tenant, reserve, self.remaining):
                return self._call(provider, spec, n, 0.0, 0, 0, "budget_reserved"), None, False
        tokens_in = tokens_out = 0
        value: T | None = None
        error: str | None = None
        transport_failed = False
        try:
            if getattr(provider, "accepts_options", False):
                options = CallOptions(max_tokens=self.limits.max_tokens, timeout_s=timeout)
                raw, usage = provider.complete(self.task, self.schema, self.system, sent, options=options)  # type: ignore[call-arg]
            else:
                raw, usage = provider.complete(self.task, self.schema, self.system, sent)
            self._answer = raw.model_dump(mode="json") if isinstance(raw, BaseModel) else raw
            tokens_in, tokens_out = charged_tokens(provider, usage, self.system, sent, raw)
            if minimizer is not None:
                raw = minimizer.restore(raw.model_dump() if isinstance(raw, BaseModel) else raw)
            value = _validate(self.schema, raw)
            if self.check is not None:
                self.check(value)
        except (ValidationError, InvalidOutput, TypeError) as exc:
            error, value = "invalid_output", None
            log.warning("model %s gave invalid %s output (%s)", self.name, self.task, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - any provider failure means "try the next"
            # the same model again (and a breaker's count) only for a retryable failure: a timeout,
            # a lost connection, a rate limit, a 5xx (keel.errors.is_retryable); else the next model
            error, value, transport_failed = _cause(exc), None, is_retryable(exc)
            if remote:  # the server read the prompt; a timed-out one may have written up to max_tokens
                tokens_in = prompt_tokens
                tokens_out = self.limits.max_tokens if is_timeout(exc) else 0
            log.warning("model %s failed on %s (%s)", self.name, self.task, type(exc).__name__)
        finally:
            if remote and self.remaining is not None and self.tenant:
                RESERVATIONS.release(self.tenant, reserve)
        ms = (time.perf_counter() - started) * 1000
        return self._call(provider, spec, n, ms, tokens_in, tokens_out, error, ok=value is not None), value, transport_failed

    def _call(self, provider: ModelProvider, spec: ModelSpec | None, n: int, ms: float, tokens_in: int,
              tokens_out: int, error: str | None, *, ok: bool = False, cached: bool = False) -> GatewayCall:
        return GatewayCall(
            task=self.task, provider=provider.name, ok=ok, tokens_in=tokens_in, tokens_out=tokens_out,
            ms=round(ms, 3), error=error, model=self.name, rule=self.rule.name, routing=self.gw.routing.version,
            cost_usd=spec.cost(tokens_in, tokens_out) if spec is not None else 0.0, degraded=self.degraded, attempt=n,
            cached=cached,
        )

    # -------------------------------------------------------------- the cache (gateway.cache)
    def _cache_key(self, provider: ModelProvider, spec: ModelSpec | None) -> tuple[CacheKey, Minimizer] | None:
        """The key of this call in the model cache, or None when it may not be cached: no cache,
        a rule without ``cache_ttl_s``, no tenant to keep it under, or a temperature above 0."""
        if self.gw.cache is None or not self.rule.cache_ttl_s or not self.tenant:
            return None
        temperature = getattr(provider, "temperature", None)
        if temperature is None:
            temperature = spec.temperature if spec is not None else 0.0
        if temperature != 0:
            return None
        minimizer = Minimizer()
        sent = minimizer.minimize(self.payload)  # the exact payload the model is sent (deterministic)
        params = {"endpoint": getattr(provider, "identity", provider.name), "provider": provider.name,
                  "method": getattr(provider, "method", None), "max_tokens": self.limits.max_tokens,
                  "temperature": temperature}
        digest = call_digest(self.system, sent, _schema_json(self.schema), params)
        return CacheKey(tenant=self.tenant, model=self.name, task=self.task, digest=digest), minimizer

    def _from_cache(self, provider: ModelProvider, spec: ModelSpec | None, key: CacheKey,
                    minimizer: Minimizer) -> tuple[GatewayCall, T] | None:
        """A hit as a call (``cached``, 0 tokens) and its value, re-validated and re-checked
        like a fresh answer; None on a miss (or a cache that cannot be read: the model is asked)."""
        assert self.gw.cache is not None and self.tenant
        started = time.perf_counter()
        try:
            answer = self.gw.cache.get(key)
        except Exception as exc:  # noqa: BLE001 - a cache never fails a model call
            log.warning("model cache unreadable (%s); asking the model", type(exc).__name__)
            return None
        value: T | None = None
        if answer is not None:
            try:
                value = _validate(self.schema, minimizer.restore(answer))
                if self.check is not None:
                    self.check(value)
            except (ValidationError, InvalidOutput, TypeError):
                value = None
                self._forget(key)
        if value is None:
            metrics.cache_miss("model", self.tenant)
            return None
        metrics.cache_hit("model", self.tenant)
        ms = (time.perf_counter() - started) * 1000
        return self._call(provider, spec, 1, ms, 0, 0, None, ok=True, cached=True), value

    def _to_cache(self, key: CacheKey) -> None:
        if self.gw.cache is None or not isinstance(self._answer, dict) or not self.rule.cache_ttl_s:
            return
        try:
            self.gw.cache.put(key, self._answer, self.rule.cache_ttl_s)
        except Exception as exc:  # noqa: BLE001 - the answer stands; it is only not kept
            log.warning("could not keep a model answer in the cache (%s)", type(exc).__name__)

    def _forget(self, key: CacheKey) -> None:
        try:
            assert self.gw.cache is not None
            self.gw.cache.drop(key)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not drop a stale model-cache row (%s)", type(exc).__name__)


@functools.lru_cache(maxsize=64)
def _schema_json(schema: type[BaseModel]) -> dict[str, Any]:
    """An output schema's JSON Schema (part of the cache key: a changed schema never reuses an answer)."""
    return schema.model_json_schema()


def _cause(exc: BaseException) -> str:
    """A failed call's safe cause: the exception class and the HTTP status when there was one
    (``provider_error:OpenAIAPIError:503``), never its message."""
    status = getattr(exc, "status_code", None) or getattr(exc.__cause__, "status_code", None)
    return f"provider_error:{type(exc).__name__}" + (f":{status}" if isinstance(status, int) else "")


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
    if not raw:  # ``{}`` validates as an empty plan: an answer that says nothing is no answer
        raise InvalidOutput("empty answer")
    return schema.model_validate(raw)


def _check_triage(value: TriageResult) -> None:
    """Reason codes only from the router's vocabulary (a free-form code never reaches the output)."""
    unknown = set(value.reason_codes) - TRIAGE_REASON_CODES
    if unknown:
        raise InvalidOutput("reason code outside the vocabulary")


def _decide_by_code(result: TriageResult, ticket: Ticket) -> TriageResult:
    """Whether a ticket carries several requests is decided here, never by the model.

    Several requests: keel's rules find them in the text, or the operations the model
    itself listed belong to two routes. Either way the ticket escalates
    ``multiple_intents`` whatever route the model chose; and a model's ``multiple_intents``
    the code does not confirm is dropped (its route stands, or ``low_confidence`` if it had none).
    """
    rules = triage_text(ticket.subject, ticket.body)
    routes = {OPERATION_ROUTE[op] for op in result.intents if op in OPERATION_ROUTE}
    if "multiple_intents" in rules.reason_codes or len(routes) > 1:
        intents = result.intents or rules.intents
        return TriageResult(route="unknown", confidence=result.confidence, reason_codes=["multiple_intents"],
                            intents=list(intents))
    codes = [c for c in result.reason_codes if c != "multiple_intents"]
    if result.route == "unknown" and not codes:
        codes = ["low_confidence"]
    if codes == list(result.reason_codes):
        return result
    return result.model_copy(update={"reason_codes": codes})


def _plan_risk(planning: PlanningInput) -> RiskTier:
    """High when the operation's tool changes a business system (the strongest model plans it)."""
    card = next((c for c in planning.tools if c.operation == planning.extraction.operation), None)
    return "high" if card is not None and card.side_effect else "low"


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
    if not value.actions and not value.rationale.strip():
        raise InvalidOutput("empty plan")  # "no action" must at least say why
    known = _known_ids(planning)
    cards = {c.name: c for c in planning.tools}
    for action in value.actions:
        if action.tool not in planning.allowlist:
            raise InvalidOutput("tool outside the allowlist")
        card = cards.get(action.tool)
        if card is not None and card.input_schema:
            try:
                jsonschema.validate(action.args, card.input_schema)
            except jsonschema.ValidationError as exc:  # the tool would reject it: the next model tries
                raise InvalidOutput("arguments the tool rejects") from exc
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


def provider_from_spec(name: str, spec: ModelSpec, settings: Settings) -> ModelProvider:
    """Build the provider of one routing-file model (endpoint and model default to the settings)."""
    if spec.provider == "local":
        return LocalProvider()
    return OpenAIProvider(
        name=name,
        model=spec.model or settings.openai_model,
        base_url=spec.base_url or settings.openai_base_url,
        api_key=settings.openai_api_key,
        timeout=settings.model_timeout_s,
        method=spec.structured_output,
        stream=spec.stream,
        max_tokens_param=spec.max_tokens_param,
        temperature=spec.temperature,
    )


def _wall_clock_s(settings: Settings) -> float | None:
    """The policy pack's per-run wall-clock cap (None if the pack cannot be read here)."""
    try:
        return float(load_policy(settings.policy_path()).budgets.wall_clock_s)
    except Exception:  # noqa: BLE001 - the runtime reports a broken pack; routing then keeps its own deadlines
        return None


def gateway_from_settings(settings: Settings, *, on_call: CallHook | None = None,
                          remaining: RemainingTokens | None = None,
                          wall_clock_s: float | None = None, cache: ModelCache | None = None) -> ModelGateway:
    """The gateway the settings describe.

    ``KEEL_MODEL_ROUTING`` set: that routing file's models and rules. Else the chain
    ``model_provider`` then ``model_fallbacks`` (duplicates dropped, order kept) for every
    task. Task deadlines are scaled to fit the policy's ``wall_clock_s``."""
    cap = wall_clock_s if wall_clock_s is not None else _wall_clock_s(settings)
    if settings.model_routing is not None:
        table = load_routing(settings.model_routing)
        models = {n: provider_from_spec(n, spec, settings) for n, spec in table.models.items()}
        return ModelGateway(routing=table, models=models, on_call=on_call, remaining=remaining, wall_clock_s=cap,
                            cache=cache)
    names = list(dict.fromkeys([settings.model_provider, *settings.model_fallbacks]))
    table = chain_routing(names)
    limits = TaskLimits(timeout_s=settings.model_timeout_s, deadline_s=max(settings.model_timeout_s, 8.0))
    table = table.model_copy(update={"tasks": {t: limits for t in ("route", "extract", "plan", "answer")}})
    return ModelGateway(routing=table, models={n: provider_from_name(n, settings) for n in names},
                        on_call=on_call, remaining=remaining, wall_clock_s=cap, cache=cache)
