"""The deterministic engine that applies the policy pack to proposed actions.

A model only *proposes* actions; this module decides their fate. The rules' numbers
(thresholds, windows, identity levels, allowlists) live in the TOML policy pack
(:mod:`guards.pack`), which an operator can edit without a deploy, while the rule *logic*
stays here, small and tested at every edge. Every rule the engine evaluates is recorded as a
:class:`~keel.types.PolicyCheck`, so a reviewer sees why, not just what.

Rule order per action (the first failing rule decides, later rules are not evaluated,
so a record the customer does not own is never described to them):

1. ``tool.known`` / ``route.allowlist``: the tool is declared and the route may use it.
2. ``args``: the arguments the rule needs are present and well-typed.
3. ``ownership``: every order, subscription or customer named belongs to the ticket's
   customer in the ticket's tenant (missing record: ``not_found``).
4. the tool's own rule (refund window/amount tiers, order status, identity level, …);
   a refund's tiers also over the customer's recent refunds (``refund.velocity``); else
   the pack's ``[tools.<name>]`` decision; else a read executes and a side effect is
   denied (``policy.rule``, ``no_policy_rule``): no tool runs because the pack forgot it.

Which tools exist and which have a side effect come from their declarations, handed in
as :class:`~keel.types.ToolCard` (``PolicyEngine(pack, tools.registry.cards())``): the
guards may not import the tools.
"""

from __future__ import annotations

from datetime import datetime, timedelta, UTC
from typing import Any, Literal, NoReturn
from collections.abc import Callable, Mapping, Sequence

from pydantic import Field, field_validator

from guards.approvals import check_edit, check_reviewer
from guards.pack import AccessRule, PolicyError, PolicyPack
from keel.errors import KeelError
from keel.types import (
    ActionDecision,
    Decision,
    PolicyCheck,
    ProposedAction,
    Route,
    StrictModel,
    ToolCard,
)

__all__ = [
    "PolicyFacts",
    "KeelRefund",
    "PlanDecision",
    "PolicyEngine",
    "parse_ts",
]

_SEVERITY: dict[str, int] = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}

# --------------------------------------------------------------------------- facts


def parse_ts(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 timestamp (``Z`` accepted) as an aware datetime; naive means UTC."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class KeelRefund(StrictModel):
    """A refund keel issued, or may issue, to the ticket's customer: a velocity fact."""

    order_id: str
    """The order refunded."""
    amount_cents: int = Field(ge=0)
    """Its amount."""
    state: Literal["executed", "pending", "planned"]
    """``executed``: issued; ``pending``: in a plan waiting for approval; ``planned``: an
    earlier action of the plan being decided (set by :meth:`PolicyEngine.evaluate_plan`)."""
    at: datetime
    """When it was issued (executed) or asked for (pending); naive means UTC."""

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


class PolicyFacts(StrictModel):
    """What the engine knows about the ticket's world, read from the back office.

    Records are shaped like the fixtures' JSON. ``orders`` and ``subscriptions`` may hold
    other customers' records too: the ownership rule is what tells them apart.
    """

    tenant: str
    """The ticket's tenant."""
    customer_id: str
    """The ticket's customer; every record an action names must be theirs."""
    now: datetime
    """The run's clock (naive means UTC)."""
    customer: dict[str, Any] | None = None
    """The ticket customer's record (identity_level, account{locked, mfa_enabled})."""
    orders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Orders by id (customer_id, status, total_cents, refunded_cents, delivered_at)."""
    subscriptions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Subscriptions by id (customer_id, period_end, status)."""
    keel_refunds: list[KeelRefund] = Field(default_factory=list)
    """The customer's refunds by keel, other than the plan's own: executed ones (at least
    those of the velocity period) and pending ones (``tools.refund_history``)."""

    @field_validator("now")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)

    @classmethod
    def from_fixtures(cls, fixtures: Mapping[str, Any], customer_id: str, now: datetime) -> PolicyFacts:
        """Facts for one customer from a fixtures-shaped back office (tests, demo)."""
        customers = {c["id"]: c for c in fixtures.get("customers", [])}
        return cls(
            tenant=fixtures["tenant"],
            customer_id=customer_id,
            now=now,
            customer=customers.get(customer_id),
            orders={o["id"]: o for o in fixtures.get("orders", [])},
            subscriptions={s["id"]: s for s in fixtures.get("subscriptions", [])},
        )


class PlanDecision(StrictModel):
    """The verdict on a whole plan: the strictest action decision, plus plan-level rules."""

    overall: Decision
    """deny > escalate > approve > execute; an empty plan executes (nothing to do)."""
    per_action: list[ActionDecision] = Field(default_factory=list)
    """One decision per proposed action, in plan order."""
    reason_codes: list[str] = Field(default_factory=list)
    """Plan-level codes first, then each action's codes, without duplicates."""
    policy_version: str = ""
    """Version of the pack that decided."""
    policy_sha256: str = ""
    """Digest of the pack file that decided (audit trail)."""


# --------------------------------------------------------------------------- engine helpers


class _Stop(KeelError):
    """Internal: a rule decided the action; carries the decision."""

    def __init__(self, decision: Decision, code: str) -> None:
        self.decision = decision
        self.code = code


class _Recorder:
    """Collects checks; ``fail`` stops evaluation with the given decision."""

    def __init__(self) -> None:
        self.checks: list[PolicyCheck] = []

    def ok(self, rule: str, detail: str = "") -> None:
        self.checks.append(PolicyCheck(rule=rule, result="pass", detail=detail))

    def fail(self, rule: str, code: str, detail: str, decision: Decision = "deny") -> NoReturn:
        self.checks.append(PolicyCheck(rule=rule, result="fail", reason_code=code, detail=detail))
        raise _Stop(decision, code)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_str(rec: _Recorder, args: Mapping[str, Any], *names: str) -> None:
    for n in names:
        v = args.get(n)
        if not isinstance(v, str) or not v.strip():
            rec.fail("args", "invalid_args", f"argument {n!r} must be a non-empty string")


def _delivered_within(order: Mapping[str, Any], now: datetime, days: int) -> tuple[bool, str]:
    """Delivered, and now − delivered_at ≤ ``days`` (inclusive at the exact instant)."""
    if order.get("status") != "delivered":
        return False, f"status is {order.get('status')!r}, not 'delivered'"
    try:
        delivered = parse_ts(order.get("delivered_at"))
    except (TypeError, ValueError):
        delivered = None
    if delivered is None:
        return False, "no valid delivered_at"
    age = now - delivered
    limit = timedelta(days=days)
    verdict = "≤" if age <= limit else ">"
    return age <= limit, f"delivered {age} ago {verdict} {days} days"


# --------------------------------------------------------------------------- engine


class PolicyEngine:
    """Applies a :class:`PolicyPack` to proposed actions. Pure: no I/O, no clock.

    ``tools``: the declared tools' cards by name (``tools.registry.cards()``). A pack that
    names an undeclared tool, or gives a ``[tools.<name>]`` rule to a tool that has a
    section of its own, is refused here (:class:`~guards.pack.PolicyError`).
    """

    def __init__(self, pack: PolicyPack, tools: Mapping[str, ToolCard]) -> None:
        pack.check_tools(tools)
        self.pack = pack
        self.tools: dict[str, ToolCard] = dict(tools)
        self._rules: dict[str, Callable[[_Recorder, ProposedAction, PolicyFacts], Decision]] = {
            "issue_refund": self._refund,
            "cancel_order": self._cancel_order,
            "update_shipping_address": self._update_address,
            "track_shipment": self._track,
            "reship_order": self._reship,
            "send_password_reset": self._access,
            "unlock_account": self._access,
            "reset_mfa": self._access,
            "change_email": self._access,
            "cancel_subscription": self._cancel_subscription,
        }
        twice = sorted(set(pack.tools) & set(self._rules))
        if twice:
            raise PolicyError(f"{pack.version}: invalid policy: [tools.{twice[0]}] duplicates the tool's own rule section")

    def side_effect(self, tool: str) -> bool:
        """Whether ``tool`` changes a business system (an unknown tool counts as one)."""
        card = self.tools.get(tool)
        return card is None or card.side_effect

    # ---- one action

    def evaluate(self, action: ProposedAction, facts: PolicyFacts, route: Route | None = None) -> ActionDecision:
        """Decide one action. With ``route`` given, the route's allowlist is enforced too."""
        rec = _Recorder()
        try:
            self._tool_allowed(rec, action.tool, route)
            self._ownership(rec, action, facts)
            decision = self._rule_for(action.tool)(rec, action, facts)
        except _Stop as stop:
            return ActionDecision(decision=stop.decision, reason_codes=[stop.code], checks=rec.checks)
        return ActionDecision(decision=decision, reason_codes=[], checks=rec.checks)

    def has_rule(self, tool: str) -> bool:
        """Whether the pack states a rule for ``tool`` (its own section or ``[tools.<name>]``)."""
        return tool in self._rules or tool in self.pack.tools

    def _rule_for(self, tool: str) -> Callable[[_Recorder, ProposedAction, PolicyFacts], Decision]:
        """The tool's own rule, else its ``[tools.<name>]`` decision, else read or refuse."""
        if tool in self._rules:
            return self._rules[tool]
        if tool in self.pack.tools:
            return self._fixed
        return self._no_rule if self.side_effect(tool) else self._read

    def _tool_allowed(self, rec: _Recorder, tool: str, route: Route | None) -> None:
        if tool not in self.tools:
            rec.fail("tool.known", "tool_not_allowed", f"unknown tool {tool!r}")
        rec.ok("tool.known", f"{tool!r} is a known tool")
        if route is None:
            return
        allowed = self.pack.allowlist(route)
        if tool not in allowed:
            rec.fail("route.allowlist", "tool_not_allowed", f"{tool!r} not allowed on route {route!r}")
        rec.ok("route.allowlist", f"{tool!r} allowed on route {route!r}")

    def _ownership(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> None:
        """Every record named must exist and belong to the ticket's customer and tenant."""
        args = action.args
        named: list[str] = []
        for key, table in (("order_id", facts.orders), ("subscription_id", facts.subscriptions)):
            if key not in args:
                continue
            _need_str(rec, args, key)
            rid = args[key]
            record = table.get(rid)
            if record is None:
                rec.fail("ownership", "not_found", f"{key} {rid!r} does not exist")
            if record.get("customer_id") != facts.customer_id or record.get("tenant", facts.tenant) != facts.tenant:
                rec.fail("ownership", "not_owner", f"{key} {rid!r} does not belong to the ticket's customer")
            named.append(rid)
        if "customer_id" in args:
            _need_str(rec, args, "customer_id")
            if args["customer_id"] != facts.customer_id:
                rec.fail("ownership", "not_owner", f"customer_id {args['customer_id']!r} is not the ticket's customer")
            if facts.customer is None:
                rec.fail("ownership", "not_found", f"customer {facts.customer_id!r} does not exist")
            if facts.customer.get("tenant", facts.tenant) != facts.tenant:
                rec.fail("ownership", "not_owner", "customer record belongs to another tenant")
            named.append(args["customer_id"])
        rec.ok("ownership", f"owned: {', '.join(named)}" if named else "no records named")

    # ---- per-tool rules (each returns the decision when every check passed)

    def _refund(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "order_id")
        amount = args.get("amount_cents")
        if not _is_int(amount) or amount <= 0:
            rec.fail("args", "invalid_args", "amount_cents must be a positive integer")
        rec.ok("args", f"amount_cents={amount}")
        order = facts.orders[args["order_id"]]
        p = self.pack.refund
        inside, why = _delivered_within(order, facts.now, p.window_days)
        if not inside:
            rec.fail("refund.window", "outside_refund_window", why)
        rec.ok("refund.window", why)
        refundable = int(order.get("total_cents", 0)) - int(order.get("refunded_cents", 0))
        if amount > refundable:
            rec.fail("refund.refundable", "amount_exceeds_refundable", f"{amount} > refundable {refundable}")
        rec.ok("refund.refundable", f"{amount} ≤ refundable {refundable}")
        decision: Decision
        if amount <= p.auto_max_cents:
            rec.ok("refund.tier", f"{amount} ≤ {p.auto_max_cents}: execute")
            decision = "execute"
        elif amount <= p.approve_max_cents:
            rec.ok("refund.tier", f"{p.auto_max_cents} < {amount} ≤ {p.approve_max_cents}: approve")
            decision = "approve"
        else:
            rec.fail(
                "refund.tier", "amount_over_agent_limit", f"{amount} > {p.approve_max_cents}: escalate",
                decision="escalate",
            )
        return self._velocity(rec, args["order_id"], amount, decision, facts)

    def _velocity(self, rec: _Recorder, order_id: str, amount: int, decision: Decision, facts: PolicyFacts) -> Decision:
        """Rule ``refund.velocity``: the tiers over the customer's recent refunds by keel.

        Per order, the refund tiers apply to the order's counted refunds plus this one; per
        customer, the velocity limits apply to all of them, and to their count. The
        stricter verdict wins and never lowers the refund's own tier. Refunds not yet
        issued (pending, earlier in the plan, this one) count on an order at most up to
        what is still refundable on it: more can never be paid out, and a customer's
        repeated request for one refund is not several refunds' worth of money.
        """
        p = self.pack.refund
        v = p.velocity
        since = facts.now - v.period
        counted = [
            r for r in facts.keel_refunds
            if r.state == "planned" or (r.state == "pending" and v.count_pending) or (r.state == "executed" and r.at >= since)
        ]
        issued: dict[str, int] = {}
        queued: dict[str, int] = {order_id: amount}
        for r in counted:
            book = issued if r.state == "executed" else queued
            book[r.order_id] = book.get(r.order_id, 0) + r.amount_cents
        at_risk = {o: min(q, _refundable(facts.orders.get(o), q)) for o, q in queued.items()}
        on_order = issued.get(order_id, 0) + at_risk[order_id]
        on_customer = sum(issued.values()) + sum(at_risk.values())
        count = len(counted) + 1
        verdict = _stricter(
            _stricter(_tier(on_order, p.auto_max_cents, p.approve_max_cents),
                      _tier(on_customer, v.max_auto_cents, v.max_approve_cents)),
            "approve" if count > v.max_auto_count else "execute",
        )
        states = [r.state for r in counted]
        detail = (
            f"last {v.describe_period()}, this refund included: order {order_id} {on_order} cents, customer "
            f"{on_customer} cents in {count} refunds ({states.count('executed')} executed, "
            f"{states.count('pending')} pending approval, {states.count('planned')} earlier in this plan); "
            f"automatic up to {p.auto_max_cents} an order, {v.max_auto_cents} and {v.max_auto_count} refunds a "
            f"customer; approval up to {p.approve_max_cents} an order, {v.max_approve_cents} a customer: {verdict}"
        )
        if _SEVERITY[verdict] > _SEVERITY[decision]:
            rec.fail("refund.velocity", "velocity_limit", detail, decision=verdict)
        rec.ok("refund.velocity", detail)
        return decision

    def _status_rule(
        self, rec: _Recorder, args: Mapping[str, Any], facts: PolicyFacts, rule: str, allowed: list[str], code: str
    ) -> Decision:
        _need_str(rec, args, "order_id")
        status = facts.orders[args["order_id"]].get("status")
        if status not in allowed:
            rec.fail(rule, code, f"status {status!r} not in {allowed}")
        rec.ok(rule, f"status {status!r} in {allowed}")
        return "execute"

    def _cancel_order(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        allowed = list(self.pack.cancel_order.allowed_statuses)
        return self._status_rule(rec, args, facts, "cancel_order.status", allowed, "not_cancellable")

    def _update_address(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "new_address")
        allowed = list(self.pack.update_shipping_address.allowed_statuses)
        return self._status_rule(rec, args, facts, "update_shipping_address.status", allowed, "already_shipped")

    def _track(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "order_id")
        decision = self.pack.track_shipment.decision
        rec.ok("track_shipment", f"read only: {decision}")
        return decision

    def _reship(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "order_id")
        days = self.pack.reship.window_days
        inside, why = _delivered_within(facts.orders[args["order_id"]], facts.now, days)
        if not inside:
            rec.fail("reship.window", "outside_refund_window", why)
        rec.ok("reship.window", f"{why}: approve")
        return "approve"

    def _access(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "customer_id")
        tool = action.tool
        if tool == "change_email":
            _need_str(rec, args, "new_email")
        rule: AccessRule = getattr(self.pack.access, tool)
        level = (facts.customer or {}).get("identity_level", 0)
        level = level if _is_int(level) else 0
        if level < rule.min_identity_level:
            rec.fail(
                f"access.{tool}",
                "identity_not_verified",
                f"identity_level {level} < {rule.min_identity_level}",
                decision="escalate",
            )
        rec.ok(f"access.{tool}", f"identity_level {level} ≥ {rule.min_identity_level}: {rule.decision}")
        return rule.decision

    def _cancel_subscription(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        args = action.args
        _need_str(rec, args, "subscription_id")
        at = args.get("at")
        if at not in ("period_end", "immediate"):
            rec.fail("args", "invalid_args", "at must be 'period_end' or 'immediate'")
        decision: Decision = getattr(self.pack.cancel_subscription, at)
        rec.ok("cancel_subscription.timing", f"at {at}: {decision}")
        return decision

    def _fixed(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        decision = self.pack.tools[action.tool].decision
        if decision in ("deny", "escalate"):
            rec.fail(f"tools.{action.tool}", "tool_not_allowed", f"the pack's rule: {decision}", decision=decision)
        rec.ok(f"tools.{action.tool}", f"the pack's rule: {decision}")
        return decision

    def _no_rule(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        rec.fail("policy.rule", "no_policy_rule", f"the pack states no rule for the side effect {action.tool!r}")

    def _read(self, rec: _Recorder, action: ProposedAction, facts: PolicyFacts) -> Decision:
        rec.ok("read", "read only, owned records: execute")
        return "execute"

    # ---- a whole plan

    def evaluate_plan(
        self,
        actions: Sequence[ProposedAction],
        facts: PolicyFacts,
        route: Route | None,
        injection_flagged: bool = False,
    ) -> PlanDecision:
        """Decide a plan: each action, then plan-level rules (size budget, injection).

        A flagged ticket may still read, but every side-effecting action is escalated:
        text in a ticket never raises an action's authority.
        """
        per_action: list[ActionDecision] = []
        planned: list[KeelRefund] = []  # the plan's earlier refunds count toward its later ones
        for action in actions:
            seen = facts.model_copy(update={"keel_refunds": [*facts.keel_refunds, *planned]}) if planned else facts
            d = self.evaluate(action, seen, route)
            if action.tool == "issue_refund" and d.decision in ("execute", "approve"):
                planned.append(KeelRefund(order_id=action.args["order_id"], amount_cents=action.args["amount_cents"],
                                          state="planned", at=facts.now))
            if injection_flagged and self.side_effect(action.tool):
                d = _escalate_for_injection(d)
            per_action.append(d)

        plan_codes: list[str] = []
        overall: Decision = "execute"
        if injection_flagged and any(self.side_effect(a.tool) for a in actions):
            plan_codes.append("suspected_prompt_injection")
            overall = "escalate"
        if len(actions) > self.pack.budgets.max_tool_calls:
            plan_codes.append("budget_exceeded")
            overall = _stricter(overall, "escalate")
        for d in per_action:
            overall = _stricter(overall, d.decision)

        codes: list[str] = []
        for c in plan_codes + [c for d in per_action for c in d.reason_codes]:
            if c not in codes:
                codes.append(c)
        return PlanDecision(
            overall=overall,
            per_action=per_action,
            reason_codes=codes,
            policy_version=self.pack.version,
            policy_sha256=self.pack.sha256,
        )

    # ---- approvals (delegating to the pure functions with this pack's settings)

    def check_reviewer(
        self, requester: str, reviewer: str, reviewer_role: str, reviewer_tenant: str, run_tenant: str
    ) -> list[str]:
        """See :func:`check_reviewer`; uses this pack's approval settings."""
        return check_reviewer(requester, reviewer, reviewer_role, reviewer_tenant, run_tenant, self.pack.approvals)

    def check_edit(self, original: ProposedAction, edited_args: Mapping[str, Any]) -> list[str]:
        """See :func:`check_edit`; uses this pack's approval settings."""
        return check_edit(original, edited_args, self.pack.approvals)


def _stricter(a: Decision, b: Decision) -> Decision:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


def _tier(cents: int, auto_max: int, approve_max: int) -> Decision:
    """execute up to ``auto_max``, approve up to ``approve_max``, else escalate."""
    return "execute" if cents <= auto_max else "approve" if cents <= approve_max else "escalate"


def _refundable(order: Mapping[str, Any] | None, default: int) -> int:
    """What is still refundable on an order (``default`` when the order is not known)."""
    if order is None:
        return default
    total, refunded = order.get("total_cents"), order.get("refunded_cents", 0)
    if not (_is_int(total) and _is_int(refunded)):
        return default
    return max(0, total - refunded)


def _escalate_for_injection(d: ActionDecision) -> ActionDecision:
    check = PolicyCheck(
        rule="injection",
        result="fail",
        reason_code="suspected_prompt_injection",
        detail="ticket flagged as suspected prompt injection: side effects need a human",
    )
    codes = ["suspected_prompt_injection"] + [c for c in d.reason_codes if c != "suspected_prompt_injection"]
    return ActionDecision(decision=_stricter(d.decision, "escalate"), reason_codes=codes, checks=[*d.checks, check])
