"""The ``supply-v1`` rules: each proposed action's fate, decided over the back office's records.

Pure and deterministic (no store, no clock of its own): the facts are handed in, so the
graph's policy node, the executor's re-decision and a unit test all get the same verdict.
Rules run in the order of ``workflows/supply/POLICY.md``; the first that fails decides. The
numbers come from the pack (:class:`guards.supply_pack.SupplyPack`); figures in an event's
text never replace a record's (a quoted cost, a price, a status).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, Field

from guards.policy import PlanDecision, parse_ts
from guards.policy import _Recorder as _Rec  # support's rule recorder: checks, and the first failure decides
from guards.policy import _Stop
from guards.supply_pack import SUPPLY_SIDE_EFFECT_TOOLS, SupplyPack
from keel.types import ActionDecision, Decision, ProposedAction, StrictModel

__all__ = ["SupplyFacts", "SupplyPolicyEngine", "shortfall", "line_for", "claim_basis", "SEVERITY"]

SEVERITY: dict[str, int] = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}


class SupplyFacts(StrictModel):
    """The records a plan is judged against: the tenant's, keyed by id (other accounts' included,
    so that another account's record is ``not_owner`` and a missing one ``not_found``)."""

    tenant: str
    account_id: str
    now: AwareDatetime
    shipments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    purchase_orders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    inventory: list[dict[str, Any]] = Field(default_factory=list)
    suppliers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    carriers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    notices: list[dict[str, Any]] = Field(default_factory=list)
    claims: list[dict[str, Any]] = Field(default_factory=list)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ts(v: Any) -> datetime | None:
    try:
        return parse_ts(v)
    except (TypeError, ValueError):
        return None


def shortfall(facts: SupplyFacts, sku: str, qty: int) -> int:
    """Units of a line still missing: its qty − available (on hand − reserved) over all warehouses."""
    available = sum(int(r.get("on_hand", 0)) - int(r.get("reserved", 0)) for r in facts.inventory if r.get("sku") == sku)
    return qty - available


def line_for(po: Mapping[str, Any], sku: str | None) -> dict[str, Any] | None:
    """The PO line an action is about: its only line, else the one with ``sku``."""
    lines = po.get("lines") or []
    if len(lines) == 1 and (sku is None or lines[0].get("sku") == sku):
        return lines[0]
    return next((ln for ln in lines if ln.get("sku") == sku), None)


def claim_basis(shipment: Mapping[str, Any], pack: SupplyPack, now: datetime) -> int | None:
    """The amount of a claim that states none: declared value (lost, damaged), shipping
    cost (late), else None (nothing to claim)."""
    if shipment.get("status") in pack.open_carrier_claim.eligible_statuses:
        return shipment.get("declared_value_cents")
    promised, end = _ts(shipment.get("promised_at")), _ts(shipment.get("delivered_at")) or now
    if promised is not None and end > promised:
        return shipment.get("shipping_cost_cents")
    return None


class SupplyPolicyEngine:
    """Decides supply plans under one pack (same ``evaluate_plan`` shape as support's engine)."""

    def __init__(self, pack: SupplyPack) -> None:
        self.pack = pack

    # ---- records and ownership
    def _owned(self, rec: _Rec, table: dict[str, dict[str, Any]], key: str, args: Mapping[str, Any],
               facts: SupplyFacts) -> dict[str, Any]:
        rid = args.get(key)
        if not isinstance(rid, str) or not rid:
            rec.fail("args", "invalid_args", f"argument {key!r} must be a non-empty string")
        row = table.get(rid)
        if row is None:
            rec.fail("ownership", "not_found", f"no record {rid} in tenant {facts.tenant}")
        if row.get("account_id") != facts.account_id:
            rec.fail("ownership", "not_owner", f"{rid} does not belong to account {facts.account_id}")
        rec.ok("ownership", f"{rid} belongs to {facts.account_id}")
        return row

    def evaluate(self, action: ProposedAction, facts: SupplyFacts, route: str | None,
                 earlier: Sequence[ProposedAction] = ()) -> ActionDecision:
        """One action's decision; ``earlier`` are the plan's actions before it (their notices count)."""
        rec = _Rec()
        try:
            if route is not None and action.tool not in self.pack.allowlist(route):
                rec.fail("allowlist", "tool_not_allowed", f"{action.tool} is not allowed on route {route}")
            rule = {
                "reroute_shipment": self._reroute, "substitute_supplier": self._substitute,
                "notify_customer": self._notify, "open_carrier_claim": self._claim,
            }.get(action.tool, self._read)
            decision = rule(rec, action.args, facts, earlier)
            return ActionDecision(decision=decision, checks=rec.checks)
        except _Stop as s:
            return ActionDecision(decision=s.decision, reason_codes=[s.code] if s.code else [], checks=rec.checks)

    def _read(self, rec: _Rec, args: Mapping[str, Any], facts: SupplyFacts, _: Any) -> Decision:
        if "shipment_id" in args:
            self._owned(rec, facts.shipments, "shipment_id", args, facts)
        if "po_id" in args:
            self._owned(rec, facts.purchase_orders, "po_id", args, facts)
        return self.pack.reads.decision

    def _reroute(self, rec: _Rec, args: Mapping[str, Any], facts: SupplyFacts, _: Any) -> Decision:
        p = self.pack.reroute_shipment
        sh = self._owned(rec, facts.shipments, "shipment_id", args, facts)
        status = sh.get("status")
        if status in p.delivered_statuses:
            rec.fail("reroute.status", "already_delivered", f"status {status}")
        if status not in p.allowed_statuses:
            rec.fail("reroute.status", "not_reroutable", f"status {status}: a claim is the remedy")
        rec.ok("reroute.status", f"status {status}")
        options = {o["id"]: o for o in (facts.carriers.get(sh.get("carrier_id"), {}).get("reroute_options") or [])}
        option = options.get(args.get("option_id"))
        if option is None:
            rec.fail("reroute.option", "not_offered", f"option {args.get('option_id')!r} is not offered by {sh.get('carrier_id')}")
        cost = option["cost_cents"]
        if args.get("amount_cents") != cost:
            rec.fail("args", "invalid_args", "amount_cents must be the carrier's quoted cost")
        if cost <= p.auto_max_cents:
            rec.ok("reroute.cost", f"{cost} <= {p.auto_max_cents}")
            return "execute"
        if cost <= p.approve_max_cents:
            rec.ok("reroute.cost", f"{p.auto_max_cents} < {cost} <= {p.approve_max_cents}")
            return "approve"
        rec.fail("reroute.cost", "cost_over_agent_limit", f"{cost} > {p.approve_max_cents}", "escalate")

    def _substitute(self, rec: _Rec, args: Mapping[str, Any], facts: SupplyFacts, _: Any) -> Decision:
        p = self.pack.substitute_supplier
        po = self._owned(rec, facts.purchase_orders, "po_id", args, facts)
        line = line_for(po, args.get("sku"))
        if line is None:
            rec.fail("args", "invalid_args", "sku names no line of the PO")
        missing = shortfall(facts, line["sku"], int(line["qty"]))
        if missing <= 0:
            rec.fail("substitute.shortfall", "stock_available", f"shortfall {missing} <= 0")
        supplier = facts.suppliers.get(args.get("supplier_id"))
        if supplier is None:
            rec.fail("args", "invalid_args", "unknown supplier")
        if not supplier.get("approved"):
            rec.fail("substitute.supplier", "supplier_not_approved", f"{supplier['id']} is not approved")
        listed = next((s for s in supplier.get("skus") or [] if s.get("sku") == line["sku"]), None)
        if listed is None:
            rec.fail("substitute.supplier", "not_offered", f"{supplier['id']} does not list {line['sku']}")
        qty, unit, amount = args.get("qty"), args.get("unit_price_cents"), args.get("amount_cents")
        if not (_int(qty) and 0 < qty <= missing) or unit != listed["unit_price_cents"] or amount != unit * qty:
            rec.fail("args", "invalid_args", "qty must be within the shortfall, prices the supplier's listed ones")
        rec.ok("substitute.shortfall", f"qty {qty} <= shortfall {missing}")
        original = int(line["unit_price_cents"])
        if unit * 10_000 > original * (10_000 + p.price_tolerance_bps):
            rec.fail("substitute.price", "price_over_tolerance", f"{unit} above {original} + {p.price_tolerance_bps} bps",
                     "approve")
        if amount > p.auto_total_max_cents:
            rec.ok("substitute.total", f"{amount} > {p.auto_total_max_cents}: a human approves")
            return "approve"
        rec.ok("substitute.total", f"{amount} <= {p.auto_total_max_cents}")
        return "execute"

    def _notify(self, rec: _Rec, args: Mapping[str, Any], facts: SupplyFacts,
                earlier: Sequence[ProposedAction]) -> Decision:
        p = self.pack.notify_customer
        po = self._owned(rec, facts.purchase_orders, "po_id", args, facts)
        if args.get("template") not in p.templates:
            rec.fail("args", "invalid_args", f"unknown template {args.get('template')!r}")
        since = facts.now - timedelta(hours=p.min_interval_hours)
        sent = [n for n in facts.notices if n.get("po_id") == po["id"] and (_ts(n.get("sent_at")) or since) > since]
        planned = [a for a in earlier if a.tool == "notify_customer" and a.args.get("po_id") == po["id"]]
        if sent or planned:
            rec.fail("notify.interval", "duplicate_notice", f"a notice for {po['id']} within {p.min_interval_hours} h")
        rec.ok("notify.interval", f"no notice for {po['id']} within {p.min_interval_hours} h")
        return "execute"

    def _claim(self, rec: _Rec, args: Mapping[str, Any], facts: SupplyFacts, _: Any) -> Decision:
        p = self.pack.open_carrier_claim
        sh = self._owned(rec, facts.shipments, "shipment_id", args, facts)
        if any(c.get("shipment_id") == sh["id"] and c.get("status") in p.blocking_claim_statuses for c in facts.claims):
            rec.fail("claim.duplicate", "duplicate_claim", f"{sh['id']} already has a claim")
        promised = _ts(sh.get("promised_at"))
        delivered = _ts(sh.get("delivered_at"))
        late = promised is not None and (delivered or facts.now) - promised >= timedelta(days=p.min_delay_days)
        if sh.get("status") not in p.eligible_statuses and not late:
            rec.fail("claim.eligible", "claim_not_eligible", f"status {sh.get('status')}, not {p.min_delay_days} d late")
        window = int(facts.carriers.get(sh.get("carrier_id"), {}).get("claim_window_days", 0))
        start = delivered or promised
        if start is None or facts.now - start > timedelta(days=window):
            rec.fail("claim.window", "outside_claim_window", f"more than {window} d since {start}")
        amount = args.get("amount_cents")
        if not (_int(amount) and amount > 0):
            rec.fail("args", "invalid_args", "amount_cents must be a positive integer")
        if amount > int(sh.get("declared_value_cents") or 0):
            rec.fail("claim.amount", "amount_exceeds_declared_value", f"{amount} > {sh.get('declared_value_cents')}")
        rec.ok("claim.amount", f"{amount} <= declared {sh.get('declared_value_cents')}")
        return "execute" if amount <= p.auto_max_cents else "approve"

    def evaluate_plan(self, actions: Sequence[ProposedAction], facts: SupplyFacts, route: str | None,
                      injection_flagged: bool = False) -> PlanDecision:
        """Each action alone, then the plan rules: a plan over the call budget escalates every
        action ``budget_exceeded``; a flagged event's side effects escalate; the strictest wins."""
        plan_codes: list[str] = []
        if len(actions) > self.pack.budgets.max_tool_calls:
            plan_codes.append("budget_exceeded")
        if injection_flagged and any(a.tool in SUPPLY_SIDE_EFFECT_TOOLS for a in actions):
            plan_codes.append("suspected_prompt_injection")
        per: list[ActionDecision] = []
        for i, action in enumerate(actions):
            if plan_codes:
                per.append(ActionDecision(decision="escalate", reason_codes=list(plan_codes)))
                continue
            per.append(self.evaluate(action, facts, route, actions[:i]))
        overall: Decision = "escalate" if plan_codes else "execute"
        for d in per:
            overall = d.decision if SEVERITY[d.decision] > SEVERITY[overall] else overall
        codes = list(dict.fromkeys([*plan_codes, *(c for d in per for c in d.reason_codes)]))
        return PlanDecision(overall=overall, per_action=per, reason_codes=codes,
                            policy_version=self.pack.version, policy_sha256=self.pack.sha256)
