"""The supply workflow's deterministic local "model": route an exception event and plan it.

Like support's keyword rules (:mod:`gateway.rules`), this stands in for a model offline: it
proposes, it cannot act (the gateway never reaches the tools) and the policy decides every
action again over the records. The rules are written from ``workflows/supply/POLICY.md``:
what each route's side effects are asked with (a verb and the record it names), how a
notice or a read is asked, a correction ("I quoted PO-… by mistake") that withdraws an id,
and the instruction-like text a supply event must not carry (a role claim, a change to the
approved list) besides what :func:`guards.injection.screen` already flags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from guards.injection import ScreenResult, screen_fields
from guards.supply_pack import SupplyPack, SupplyRoute
from guards.supply_policy import SupplyFacts, claim_basis, line_for, shortfall
from keel.types import ProposedAction, StrictModel

__all__ = ["SupplyEvent", "SupplyTriage", "SupplyPlan", "triage_event", "plan_event", "screen_event"]

_F = re.IGNORECASE
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_SH = re.compile(r"\bSH-\d+\b", _F)
_PO = re.compile(r"\bPO-\d+\b", _F)
_SKU = re.compile(r"\bSKU-\d+\b", _F)
_MONEY = re.compile(r"\$\s?(\d{1,3}(?:,\d{3})*|\d+)(?:\.(\d{2}))?")
_CORRECTION = re.compile(r"by mistake|\bwrong\b|arrived fine|\bignore\b", _F)
# side effects, each with the verbs that ask for it (POLICY.md "Routes and tools")
_REROUTE = re.compile(r"\b(?:upgrade|reroute|re-route|expedite|reship|hand(?: it)? over|move|switch it to|put it on|"
                      r"book|charter|send a dedicated|ship(?:s)? (?:it )?from)\b", _F)
_SUBSTITUTE_VERB = re.compile(r"\b(?:order|source|reorder|substitute|switch|get them|find|sub)\b", _F)
_SUBSTITUTE = re.compile(r"\b(?:substitute|sub)\b", _F)
_SUPPLIER_WORD = re.compile(r"\bsuppliers?\b|\balternative\b|\binstead\b|\bfrom [A-Z][a-z]+", 0)
_CLAIM = re.compile(r"\bclaim\b", _F)
_NOTIFY = re.compile(r"\bnotices?\b|\bnotify\b|\blet (?:the|our) customer know\b|\btell the customer\b|"
                     r"\b(?:e-?mail|send|update) the customer\b|\bcustomer update\b", _F)
_READ_SHIPMENT = re.compile(r"\bwhere is\b|\beta\b|\bwhen (?:is|will) it\b|\bsupposed to arrive\b", _F)
_READ_INVENTORY = re.compile(r"\bhow many\b|\bavailable\b|\bon hand\b", _F)
_READ_SUPPLIERS = re.compile(r"\bwhich (?:approved )?suppliers\b|\bwho (?:carries|supplies)\b|\bunit price\b", _F)
_CHEAPEST = re.compile(r"\bcheapest\b|\bwhatever is (?:cheapest|cheaper)\b", _F)
# instructions the shared screen does not cover in supply's words: claiming a role to
# change what the agent may do, or editing the approved list through an event
_ROLE_CLAIM = re.compile(r"\bI(?:'m| am) (?:the|an?) [\w -]{0,30}?\b(?:admin|administrator|manager|supervisor|director)\b", _F)
_APPROVED_LIST = re.compile(r"\badd\b[^.]{0,60}\bto the approved\b", _F)
_STOP = frozenset({"to", "the", "from", "a", "an", "it", "upgrade", "switch", "over", "hand", "and", "of", "wh"})
_TOKEN = re.compile(r"[a-z0-9]+")

_INTENT_ROUTE: dict[str, SupplyRoute] = {"reroute": "delay", "substitute": "stock", "claim": "claims"}


class SupplyEvent(StrictModel):
    """An exception event (``workflows/supply/events.jsonl``). Its text is data, never instructions."""

    id: str = Field(min_length=1, max_length=128)
    tenant: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=64)
    kind: str = Field(default="other", max_length=32)
    channel: str = Field(default="email", max_length=32)
    subject: str = Field(default="", max_length=1_000)
    body: str = Field(max_length=20_000)

    @property
    def text(self) -> str:
        """Subject and body, as one text."""
        return f"{self.subject}\n\n{self.body}"


class SupplyTriage(StrictModel):
    """The router's verdict on an event."""

    route: SupplyRoute
    confidence: float = Field(ge=0, le=1)
    reason_codes: list[str] = Field(default_factory=list)
    intents: list[str] = Field(default_factory=list)
    """Side effects and reads asked for: reroute, substitute, claim, notify, read_*."""
    injection: bool = False
    """Instruction-like text was found (:func:`screen_event`)."""


class SupplyPlan(StrictModel):
    """What the planner proposes: actions, or a reason it proposes none."""

    actions: list[ProposedAction] = Field(default_factory=list)
    escalate: str | None = None


def screen_event(event: SupplyEvent) -> ScreenResult:
    """The injection screen of the event's text: the shared screen, plus supply's own words
    (a role claimed to change what the agent may do, an edit of the approved list)."""
    result = screen_fields({"subject": event.subject, "body": event.body}, customer_id=event.account_id)
    extra = [(name, m) for name, rx in (("role_claim", _ROLE_CLAIM), ("approved_list_edit", _APPROVED_LIST))
             if (m := rx.search(event.text))]
    if result.flagged or not extra:
        return result
    return result.model_copy(update={
        "flagged": True, "score": 1.0,
        "signals": list(dict.fromkeys([*result.signals, *(n for n, _ in extra)])),
        "evidence": [*result.evidence, *(m.group(0)[:80] for _, m in extra)][:5]})


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCES.split(text) if s.strip()]


def _asks_substitution(sentence: str) -> bool:
    if _SUBSTITUTE.search(sentence):
        return True
    return bool(_SUBSTITUTE_VERB.search(sentence) and _SUPPLIER_WORD.search(sentence))


def _intents(text: str) -> list[str]:
    found: list[str] = []
    for s in _sentences(text):
        if _REROUTE.search(s) and _SH.search(text):
            found.append("reroute")
        if _asks_substitution(s):
            found.append("substitute")
        if _CLAIM.search(s):
            found.append("claim")
        if _NOTIFY.search(s):
            found.append("notify")
    if not found:
        for name, rx in (("read_shipment", _READ_SHIPMENT), ("read_suppliers", _READ_SUPPLIERS),
                         ("read_inventory", _READ_INVENTORY)):
            if rx.search(text):
                found.append(name)
                break
    return list(dict.fromkeys(found))


def _notice_route(text: str) -> SupplyRoute:
    if re.search(r"\blost\b|\bloss\b", text, _F):
        return "claims"
    if re.search(r"substitut|supplier", text, _F):
        return "stock"
    return "delay"


def triage_event(event: SupplyEvent, pack: SupplyPack) -> SupplyTriage:
    """Route an event: one route's side effects (a notice never counts as a second), a notice
    alone to its template's route, a read to the route whose read answers it, else unknown."""
    text = event.text
    intents = _intents(text)
    injection = screen_event(event).flagged
    routes = list(dict.fromkeys(_INTENT_ROUTE[i] for i in intents if i in _INTENT_ROUTE))
    if len(routes) > 1:
        return SupplyTriage(route="unknown", confidence=0.9, reason_codes=["multiple_intents"], intents=intents,
                            injection=injection)
    route: SupplyRoute | None = routes[0] if routes else None
    if route is None and "notify" in intents:
        route = _notice_route(text)
    if route is None and intents:
        route = "delay" if intents[0] == "read_shipment" else "stock"
    has_record = bool(_SH.search(text) or _PO.search(text) or _SKU.search(text))
    if route is None or not has_record:
        return SupplyTriage(route="unknown", confidence=0.3, reason_codes=["low_confidence"], intents=intents,
                            injection=injection)
    side_effects = any(i in _INTENT_ROUTE or i == "notify" for i in intents)
    codes = ["suspected_prompt_injection"] if injection and side_effects else []
    return SupplyTriage(route=route, confidence=0.9, reason_codes=codes, intents=intents, injection=injection)


def _ids(rx: re.Pattern[str], text: str) -> list[str]:
    """Ids the event asks about: withdrawn ones (a sentence saying it was a mistake) left out."""
    keep: list[str] = []
    dropped: set[str] = set()
    for s in _sentences(text):
        ids = [m.upper() for m in rx.findall(s)]
        if _CORRECTION.search(s):
            dropped.update(ids)
        else:
            keep.extend(ids)
    return [i for i in dict.fromkeys(keep) if i not in dropped] or list(dict.fromkeys(dropped))[-1:]


def _request_text(text: str, rx: re.Pattern[str]) -> str:
    sentences = [s for s in _sentences(text) if rx.search(s)]
    return " ".join(sentences) or text


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower())) - _STOP


def _option(shipment: Mapping[str, Any], carriers: Mapping[str, Mapping[str, Any]], ask: str) -> dict[str, Any] | None:
    """The reroute option the request names (scored on its label's words; the shipment's own
    carrier wins ties), or the carrier's cheapest when none is named."""
    own = carriers.get(str(shipment.get("carrier_id"))) or {}
    words = _tokens(ask)
    best: tuple[float, dict[str, Any]] | None = None
    for carrier in carriers.values():
        for opt in carrier.get("reroute_options") or []:
            score = len(_tokens(str(opt.get("label", ""))) & words)
            if score and carrier is own:
                score += 0.5
            if score and (best is None or score > best[0]):
                best = (score, opt)
    if best is not None and not _CHEAPEST.search(ask):
        return best[1]
    options = list(own.get("reroute_options") or [])
    return min(options, key=lambda o: o["cost_cents"]) if options else None


def _stated_cents(text: str) -> int | None:
    m = _MONEY.search(text)
    if not m:
        return None
    return int(m.group(1).replace(",", "")) * 100 + int(m.group(2) or 0)


def _supplier_named(ask: str, suppliers: Mapping[str, Mapping[str, Any]], exclude: str) -> dict[str, Any] | None:
    for s in suppliers.values():
        first = str(s.get("name", "")).split(" ")[0]
        if s["id"] != exclude and first and re.search(rf"\b{re.escape(first)}\b", ask, _F):
            return dict(s)
    return None


def _substitution(facts: SupplyFacts, po: Mapping[str, Any], ask: str) -> tuple[dict[str, Any] | None, str | None]:
    skus = [m.upper() for m in _SKU.findall(ask)]
    line = line_for(po, skus[0] if skus else None) or (po.get("lines") or [None])[0]
    if line is None:
        return None, None
    args: dict[str, Any] = {"po_id": po["id"], "sku": line["sku"]}
    missing = shortfall(facts, line["sku"], int(line["qty"]))
    named = _supplier_named(ask, facts.suppliers, str(line.get("supplier_id")))
    if named is not None:
        args["supplier_id"] = named["id"]
    if missing <= 0:
        return args, None
    if named is None:
        offers = [(x["unit_price_cents"], x.get("lead_time_days", 0), s["id"], x) for s in facts.suppliers.values()
                  if s.get("approved") and s["id"] != line.get("supplier_id")
                  for x in s.get("skus") or [] if x.get("sku") == line["sku"]]
        if not offers:
            return None, "no_approved_supplier"
        named = facts.suppliers[min(offers, key=lambda o: o[:3])[2]]
        args["supplier_id"] = named["id"]
    listed = next((x for x in named.get("skus") or [] if x.get("sku") == line["sku"]), None)
    if named.get("approved") and listed is not None:
        unit = int(listed["unit_price_cents"])
        args.update(qty=missing, unit_price_cents=unit, amount_cents=unit * missing)
    return args, None


def plan_event(event: SupplyEvent, triage: SupplyTriage, facts: SupplyFacts, pack: SupplyPack) -> SupplyPlan:
    """Propose the event's actions from the records the run may see (``facts`` holds only the
    account's own shipments and POs, so another account's figures never reach a plan)."""
    text, route, intents = event.text, triage.route, triage.intents
    shipments = _ids(_SH, text)
    pos = _ids(_PO, text)
    actions: list[ProposedAction] = []
    po_for_notice = pos[0] if pos else None
    if route == "delay" and "reroute" in intents:
        ask = _request_text(text, _REROUTE)
        for sid in shipments:
            args: dict[str, Any] = {"shipment_id": sid}
            sh = facts.shipments.get(sid)
            if sh is not None:
                po_for_notice = po_for_notice or sh.get("po_id")
                opt = _option(sh, facts.carriers, ask)
                if opt is not None:
                    args["option_id"] = opt["id"]
                    own = facts.carriers.get(str(sh.get("carrier_id"))) or {}
                    if any(o["id"] == opt["id"] for o in own.get("reroute_options") or []):
                        args["amount_cents"] = opt["cost_cents"]
            actions.append(ProposedAction(tool="reroute_shipment", args=args))
    elif route == "stock" and "substitute" in intents:
        ask = _request_text(text, _SUBSTITUTE_VERB)
        for pid in pos[:1]:
            po = facts.purchase_orders.get(pid)
            if po is None:
                actions.append(ProposedAction(tool="substitute_supplier", args={"po_id": pid}))
                continue
            args, escalate = _substitution(facts, po, ask)
            if escalate:
                return SupplyPlan(escalate=escalate)
            if args is not None:
                actions.append(ProposedAction(tool="substitute_supplier", args=args))
    elif route == "claims" and "claim" in intents:
        stated = _stated_cents(_request_text(text, _CLAIM))
        for sid in shipments[:1]:
            args = {"shipment_id": sid}
            sh = facts.shipments.get(sid)
            if sh is not None:
                po_for_notice = po_for_notice or sh.get("po_id")
                amount = stated if stated is not None else claim_basis(sh, pack, facts.now)
                if amount is not None:
                    args["amount_cents"] = amount
            actions.append(ProposedAction(tool="open_carrier_claim", args=args))
    elif any(i.startswith("read_") for i in intents):
        skus = [m.upper() for m in _SKU.findall(text)]
        if "read_shipment" in intents and shipments:
            actions.append(ProposedAction(tool="get_shipment", args={"shipment_id": shipments[0]}))
        elif "read_suppliers" in intents and skus:
            actions.append(ProposedAction(tool="list_suppliers", args={"sku": skus[0]}))
        elif skus:
            actions.append(ProposedAction(tool="get_inventory", args={"sku": skus[0]}))
    if "notify" in intents:
        if po_for_notice is None and shipments and shipments[0] in facts.shipments:
            po_for_notice = facts.shipments[shipments[0]].get("po_id")
        template = next((t for t, r in pack.notify_customer.templates.items() if r == route), None)
        if po_for_notice and template:
            actions.append(ProposedAction(tool="notify_customer", args={"po_id": po_for_notice, "template": template}))
    return SupplyPlan(actions=actions)




def known_ids(text: str) -> dict[str, Sequence[str]]:
    """The shipments and POs an event names (a correction's withdrawn ids left out)."""
    return {"shipments": _ids(_SH, text), "purchase_orders": _ids(_PO, text)}
