"""The local provider on the demo and golden tickets, on paraphrases, and its extraction
and planning rules. Everything is offline and deterministic."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import LocalProvider, ModelGateway, PlanningInput
from gateway.rules import (
    extract_text,
    find_amount_cents,
    find_new_address,
    find_new_email,
    find_timing,
    is_full_refund,
    triage_text,
)
from keel.types import Extraction, Route, Ticket
from tools.registry import cards

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
GOLDEN = ROOT / "evals" / "golden"

ALLOWLISTS: dict[str, list[str]] = {
    "billing": ["get_customer", "get_order", "list_payments", "issue_refund", "cancel_subscription"],
    "orders": ["get_customer", "get_order", "track_shipment", "cancel_order", "update_shipping_address", "reship_order"],
    "access": ["get_customer", "get_account", "send_password_reset", "reset_mfa", "change_email", "unlock_account"],
    "knowledge": ["search_kb"],
}
TOOL_OPERATION = {c.name: c.operation for c in cards().values() if c.operation}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cases(folder: Path) -> list[tuple[Ticket, dict[str, Any], dict[str, Any]]]:
    fixtures = json.loads((folder / "fixtures.json").read_text())
    expected = {row["ticket_id"]: row for row in _jsonl(folder / "expected.jsonl")}
    return [(Ticket.model_validate(t), expected[t["id"]], fixtures) for t in _jsonl(folder / "tickets.jsonl")]


DEMO_CASES = _cases(DEMO)
GOLDEN_CASES = _cases(GOLDEN)
ALL_CASES = [pytest.param(*c, id=c[0].id) for c in DEMO_CASES + GOLDEN_CASES]


def planning_input(ticket: Ticket, route: Route, extraction: Extraction, fixtures: dict[str, Any]) -> PlanningInput:
    """What the graph gives the planner: the customer's records plus orders the ticket names."""
    named = set(re.findall(r"\bO-\d+\b", f"{ticket.subject} {ticket.body}"))
    return PlanningInput(
        ticket=ticket,
        route=route,
        extraction=extraction,
        allowlist=ALLOWLISTS[route],
        tools=list(cards(ALLOWLISTS[route]).values()),
        customer=next((c for c in fixtures["customers"] if c["id"] == ticket.customer_id), None),
        orders=[o for o in fixtures["orders"] if o["customer_id"] == ticket.customer_id],
        subscriptions=[s for s in fixtures["subscriptions"] if s["customer_id"] == ticket.customer_id],
        named_orders={o["id"]: o for o in fixtures["orders"] if o["id"] in named},
    )


@pytest.fixture(scope="module")
def gateway() -> ModelGateway:
    return ModelGateway([LocalProvider()])


# ------------------------------------------------------------------ demo + golden tickets
@pytest.mark.parametrize(("ticket", "expected", "fixtures"), ALL_CASES)
def test_route_operation_and_plan(gateway: ModelGateway, ticket: Ticket, expected: dict, fixtures: dict) -> None:
    triage = gateway.triage(ticket)
    assert triage.route == expected["route"]
    assert 0.0 <= triage.confidence <= 1.0
    if triage.route == "unknown":
        assert triage.reason_codes == expected["reason_codes"]
        return
    assert triage.confidence >= 0.6
    extraction = gateway.extract(ticket, triage.route)
    plan = gateway.plan(planning_input(ticket, triage.route, extraction, fixtures))
    if expected["tool"] is None:  # prompt injections: the guards stop these, the planner still proposes
        assert "suspected_prompt_injection" in expected["reason_codes"]
        return
    assert extraction.operation == TOOL_OPERATION[expected["tool"]]
    assert plan.actions, plan.rationale
    action = plan.actions[0]
    assert action.tool == expected["tool"]
    if expected["amount_cents"] is not None:
        assert action.args["amount_cents"] == expected["amount_cents"]
    named = re.findall(r"\b[OS]-\d+\b", ticket.body)
    for key in ("order_id", "subscription_id"):
        if key in action.args and named:
            assert action.args[key] in named


def test_demo_extraction_details(gateway: ModelGateway) -> None:
    by_id = {t.id: t for t, _, _ in DEMO_CASES}
    get = lambda tid, route: gateway.extract(by_id[tid], route)  # noqa: E731
    assert get("T-1", "billing").model_dump(exclude_defaults=True) == {
        "operation": "refund", "order_id": "O-5001", "full_refund": True}
    assert get("T-20", "billing").amount_cents == 2000
    assert get("T-29", "billing").amount_cents == 7500
    assert get("T-23", "billing").full_refund is True
    assert get("T-6", "billing").timing == "immediate"
    assert get("T-18", "billing").timing == "period_end"
    assert get("T-17", "access").new_email == "gus.lima@newmail.example"
    assert get("T-22", "orders").new_address == "48 Harbour Road, Apt 3, Portland, ME 04101"
    assert get("T-28", "orders").new_address == "9 Birch Lane, Austin TX 78701"
    assert get("T-12", "knowledge").query


def test_demo_plans_resolve_implicit_records(gateway: ModelGateway) -> None:
    """No order or subscription named: the customer's only one is used, never a guess."""
    cases = {t.id: (t, f) for t, _, f in DEMO_CASES}
    ticket, fixtures = cases["T-26"]
    plan = gateway.plan(planning_input(ticket, "billing", gateway.extract(ticket, "billing"), fixtures))
    assert plan.actions[0].args == {"order_id": "O-5003", "amount_cents": 3499}
    ticket, fixtures = cases["T-6"]
    plan = gateway.plan(planning_input(ticket, "billing", gateway.extract(ticket, "billing"), fixtures))
    assert plan.actions[0].args == {"subscription_id": "S-9003", "at": "immediate"}


def test_accuracy_summary() -> None:
    """Route and main-operation accuracy of the rules, for the report: all correct."""
    for cases in (DEMO_CASES, GOLDEN_CASES):
        routes = sum(triage_text(t.subject, t.body).route == e["route"] for t, e, _ in cases)
        assert routes == len(cases)


# ------------------------------------------------------------------ paraphrases
PARAPHRASES = [
    ("hey, can u tell me where my package is? order O-1", "orders", "track_order"),
    ("I'd like my money returned for O-12, the item never worked.", "billing", "refund"),
    ("Please reverse the charge for O-5, I returned it last week.", "billing", "refund"),
    ("please terminate my membership effective immediately", "billing", "cancel_subscription"),
    ("I no longer want to be billed monthly, cancel the plan when it renews", "billing", "cancel_subscription"),
    ("Could you help me get into my account? It says it's locked.", "access", "unlock_account"),
    ("I can't sign in, I forgot my password", "access", "password_reset"),
    ("what's the process to enable 2FA?", "knowledge", "question"),
    ("Please remove the two-step verification from my account, I changed phones.", "access", "mfa_reset"),
    ("My email has changed, please update it to a.b@new.example", "access", "change_email"),
    ("Send my order O-9 to 12 New Road, Leeds LS1 4AP instead", "orders", "change_address"),
    ("The cups in O-4 arrived broken, I'd like new ones sent out.", "orders", "reship"),
    ("Is there a way to change my shipping address after ordering?", "knowledge", "question"),
    ("How long do refunds take to show up on my card?", "knowledge", "question"),
    ("why did you charge me twice this month??", "billing", "billing_question"),
    ("My order O-8 hasn't shipped yet, can you cancel it?", "orders", "cancel_order"),
    ("The parcel for O-3 says delivered but I never got it. Can you resend it?", "orders", "reship"),
    ("I was charged twice for O-3, please refund one of the charges", "billing", "refund"),
    ("Do you ship to Australia?", "knowledge", "question"),
    ("Pls refund 45 usd for O-66", "billing", "refund"),
    ("What happens if I cancel my subscription mid-month?", "knowledge", "question"),
    ("Hi there, I'm writing because my refund for O-2 hasn't shown up yet", "billing", "billing_question"),
    ("Where is my refund for O-5?", "billing", "billing_question"),
    ("I never received my order O-5 and I want my money back", "billing", "refund"),
    ("Is it possible to get a refund for O-5? The strap broke.", "billing", "refund"),
    ("my 2fa isn't working, can you turn it off", "access", "mfa_reset"),
    ("I need a new password", "access", "password_reset"),
    ("Help!! Locked out again", "access", "unlock_account"),
    ("How do I cancel an order?", "knowledge", "question"),
    ("Please do not cancel my subscription, just refund O-1.", "billing", "refund"),
    ("Can I have a refund for O-9? It doesn't fit.", "billing", "refund"),
    ("please stop auto-renewal on my pro plan", "billing", "cancel_subscription"),
    ("Reset the authenticator on my account please, new phone", "access", "mfa_reset"),
    ("The vase in O-3 was cracked. Send another please", "orders", "reship"),
    ("The password reset link you sent expired, send a new one please", "access", "password_reset"),
    ("What is your phone number?", "knowledge", "question"),
    ("I would like to know how returns work", "knowledge", "question"),
    ("Order O-10: change the address to Flat 4, 20 Queen St, Bristol BS1 4DJ, thanks!", "orders", "change_address"),
]


@pytest.mark.parametrize(("text", "route", "operation"), PARAPHRASES)
def test_paraphrases(text: str, route: str, operation: str) -> None:
    triage = triage_text("", text)
    assert triage.route == route, triage
    assert triage.confidence >= 0.6
    assert extract_text("", text, triage.route).operation == operation


@pytest.mark.parametrize(
    "text",
    [
        "Please unlock my account and also refund O-4",
        "Cancel my order O-2 and send a password reset link",
        "Refund $10 on O-1. Also change my email to x@y.example",
    ],
)
def test_actions_in_two_routes_are_multiple_intents(text: str) -> None:
    triage = triage_text("", text)
    assert (triage.route, triage.reason_codes) == ("unknown", ["multiple_intents"])
    assert len(triage.intents) >= 2


@pytest.mark.parametrize("text", ["hjkl qwe ??? zzz pls", "lorem ipsum dolor sit amet", "ok", "!!!", "It's broken again. Fix it."])
def test_gibberish_and_vague_tickets_are_low_confidence(text: str) -> None:
    triage = triage_text("", text)
    assert triage.route == "unknown"
    assert triage.reason_codes == ["low_confidence"]
    assert triage.confidence < 0.6


def test_question_versus_request() -> None:
    assert triage_text("", "how do I turn on two-factor authentication?").route == "knowledge"
    assert triage_text("", "how do I reset my two-factor authentication?").route == "knowledge"
    assert triage_text("", "please reset my two-factor authentication").route == "access"
    assert triage_text("", "What is your refund policy?").route == "knowledge"
    assert triage_text("", "I want a refund for O-5").route == "billing"


def test_confidence_tracks_match_strength() -> None:
    clear = triage_text("", "Please refund order O-1 in full, it arrived broken.")
    weak = triage_text("", "I have a tracking question")
    assert clear.confidence >= 0.9
    assert 0.6 <= weak.confidence < clear.confidence


def test_same_route_operations_are_one_route_with_both_intents() -> None:
    triage = triage_text("", "Please refund $20 on O-1 and cancel my subscription at the end of the period.")
    assert triage.route == "billing"
    assert triage.intents == ["refund", "cancel_subscription"]


def test_subject_is_used_when_the_body_names_no_operation() -> None:
    assert triage_text("Cancel my subscription", "Thanks in advance.").route == "billing"


# ------------------------------------------------------------------ extraction helpers
@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("refund $20", 2000),
        ("refund $75.50 please", 7550),
        ("refund $7.5", 750),
        ("20 dollars back", 2000),
        ("refund 2000 cents", 2000),
        ("refund USD 30", 3000),
        ("refund 45 usd", 4500),
        ("refund $1,250.00", 125000),
        ("I paid $120 but please refund $40 of it", 4000),
        ("The 65-inch TV from order O-5007", None),
        ("order O-5006 after two uses", None),
    ],
)
def test_amounts(text: str, cents: int | None) -> None:
    assert find_amount_cents(text) == cents


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("I want my money back", True),
        ("I'd like a full refund", True),
        ("Please refund the rest of the order", True),
        ("Refund order O-1 in full", True),
        ("Refund the whole order", True),
        ("I'd like a refund", False),
        ("I don't want my money back, send a replacement", False),
    ],
)
def test_full_refund(text: str, full: bool) -> None:
    assert is_full_refund(text) is full


@pytest.mark.parametrize(
    ("text", "timing"),
    [
        ("cancel my pro subscription immediately please. effective today, not at the end of the month", "immediate"),
        ("Please cancel at the end of the current billing period. I don't want it to renew.", "period_end"),
        ("cancel my plan", "period_end"),
        ("cancel it right away", "immediate"),
        ("don't cancel immediately, wait until the end of the period", "period_end"),
        ("stop my membership from renewing", "period_end"),
    ],
)
def test_timing(text: str, timing: str) -> None:
    assert find_timing(text) == timing


def test_email_and_address() -> None:
    assert find_new_email("change it from old@a.example to new@b.example.") == "new@b.example"
    assert find_new_email("my new email is x.y+z@mail.example") == "x.y+z@mail.example"
    assert find_new_email("no email here") is None
    assert find_new_address("Please ship order O-1 to 48 Harbour Road, Apt 3, Portland, ME 04101 instead.") == (
        "48 Harbour Road, Apt 3, Portland, ME 04101"
    )
    assert find_new_address("I'd like to change the address for O-2 to 12 Main St. Springfield, IL 62701.") == (
        "12 Main St. Springfield, IL 62701"
    )
    assert find_new_address("change the delivery address to 9 Birch Lane, Austin TX 78701? Thanks") == (
        "9 Birch Lane, Austin TX 78701"
    )
    assert find_new_address("I want to change my address") is None


def test_order_id_follows_its_operation() -> None:
    text = "Please cancel order O-1, and change the shipping address of O-2 to 14 Maple Avenue, Albany."
    assert extract_text("", text, "orders", operation="cancel_order").order_id == "O-1"
    assert extract_text("", text, "orders", operation="change_address").order_id == "O-2"


def test_ids_are_normalised_and_never_invented() -> None:
    ext = extract_text("", "please refund o-12 in full", "billing")
    assert ext.order_id == "O-12"
    assert extract_text("", "please refund my last order", "billing").order_id is None


# ------------------------------------------------------------------ planning rules
def _ticket(body: str, customer: str = "C-1") -> Ticket:
    return Ticket(id="T", tenant="t", customer_id=customer, body=body)


def _order(oid: str, status: str = "delivered", total: int = 5000, refunded: int = 0, placed: str = "2026-11-01T00:00:00Z") -> dict:
    return {"id": oid, "customer_id": "C-1", "status": status, "total_cents": total, "refunded_cents": refunded, "placed_at": placed}


def _plan(body: str, route: Route, **records: Any):
    ticket = _ticket(body)
    extraction = extract_text("", body, route)
    allowlist = records.pop("allowlist", ALLOWLISTS[route])
    return LocalProvider().plan(
        PlanningInput(ticket=ticket, route=route, extraction=extraction, allowlist=allowlist,
                      tools=list(cards(allowlist).values()), **records)
    )


def test_refund_without_an_identifiable_order_is_an_empty_plan() -> None:
    plan = _plan("I want my money back", "billing", orders=[_order("O-1"), _order("O-2")])
    assert plan.actions == [] and "no order" in plan.rationale


def test_full_refund_uses_the_remainder_and_refuses_nothing_left() -> None:
    assert _plan("refund the rest of O-1", "billing", orders=[_order("O-1", total=20000, refunded=5000)]).actions[0].args[
        "amount_cents"
    ] == 15000
    assert _plan("refund the rest of O-1", "billing", orders=[_order("O-1", total=5000, refunded=5000)]).actions == []


def test_another_customers_named_order_is_planned_for_the_guards_to_deny() -> None:
    other = {**_order("O-9", total=3000), "customer_id": "C-2"}
    plan = _plan("full refund for O-9 please", "billing", orders=[_order("O-1")], named_orders={"O-9": other})
    assert plan.actions[0].args == {"order_id": "O-9", "amount_cents": 3000}


def test_tracking_picks_the_most_recent_order_on_its_way() -> None:
    orders = [
        _order("O-1", "delivered", placed="2026-11-20T00:00:00Z"),
        _order("O-2", "shipped", placed="2026-11-10T00:00:00Z"),
        _order("O-3", "shipped", placed="2026-11-15T00:00:00Z"),
    ]
    assert _plan("where is my package?", "orders", orders=orders).actions[0].args == {"order_id": "O-3"}


def test_subscription_must_be_named_or_the_only_active_one() -> None:
    subs = [{"id": "S-1", "status": "active"}, {"id": "S-2", "status": "active"}]
    assert _plan("cancel my subscription", "billing", subscriptions=subs).actions == []
    subs[1]["status"] = "cancelled"
    assert _plan("cancel my subscription", "billing", subscriptions=subs).actions[0].args == {
        "subscription_id": "S-1", "at": "period_end"}


def test_plans_stay_inside_the_allowlist() -> None:
    plan = _plan("please cancel order O-1", "orders", orders=[_order("O-1", "placed")], allowlist=["get_order"])
    assert plan.actions == [] and "allowlist" in plan.rationale


def test_access_actions_take_the_ticket_customer() -> None:
    assert _plan("please unlock my account, I am C-999", "access").actions[0].args == {"customer_id": "C-1"}
    plan = _plan("Please change my email to new@mail.example", "access")
    assert plan.actions[0].args == {"customer_id": "C-1", "new_email": "new@mail.example"}
    assert _plan("Please change my email", "access").actions == []


def test_two_operations_of_one_route_are_planned_in_order() -> None:
    body = "Please cancel order O-1, and change the shipping address of O-2 to 14 Maple Avenue, Albany, NY 12207."
    plan = _plan(body, "orders", orders=[_order("O-1", "placed"), _order("O-2", "paid")])
    assert [(a.tool, a.args["order_id"]) for a in plan.actions] == [
        ("cancel_order", "O-1"), ("update_shipping_address", "O-2")]


def test_local_provider_is_deterministic_and_costs_no_tokens() -> None:
    provider = LocalProvider()
    payload = {"ticket": _ticket("Please refund order O-1 in full").model_dump()}
    first, usage = provider.complete("triage", type(triage_text("", "x")), "system", payload)
    second, _ = provider.complete("triage", type(first), "system", payload)
    assert first == second
    assert (usage.tokens_in, usage.tokens_out) == (0, 0)  # it calls no model
    with pytest.raises(ValueError):
        provider.complete("summarise", type(first), "system", payload)
