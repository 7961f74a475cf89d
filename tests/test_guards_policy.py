"""Policy pack loading and the policy engine, with every threshold tested at its edge."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path
from typing import Any

import pytest

from guards.approvals import apply_edit, check_edit, check_reviewer
from guards.pack import DEFAULT_POLICY_PATH, ApprovalPolicy, PolicyError, PolicyPack, load_policy
from guards.policy import PolicyEngine, PolicyFacts
from keel.types import ProposedAction
from tools.registry import TOOLS, cards

DEMO = Path(__file__).resolve().parent.parent / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
PACK = load_policy()
ENGINE = PolicyEngine(PACK, cards())


def order(**kw: Any) -> dict[str, Any]:
    base = {
        "customer_id": "C-1",
        "status": "delivered",
        "total_cents": 100_000,
        "refunded_cents": 0,
        "delivered_at": (NOW - timedelta(days=5)).isoformat(),
    }
    return {**base, **kw}


def facts(
    orders: dict[str, dict[str, Any]] | None = None,
    subs: dict[str, dict[str, Any]] | None = None,
    identity_level: int = 2,
    customer: bool = True,
    now: datetime = NOW,
) -> PolicyFacts:
    return PolicyFacts(
        tenant="acme",
        customer_id="C-1",
        now=now,
        customer={"id": "C-1", "identity_level": identity_level, "account": {"locked": True, "mfa_enabled": True}}
        if customer
        else None,
        orders=orders if orders is not None else {"O-1": order()},
        subscriptions=subs
        if subs is not None
        else {"S-1": {"customer_id": "C-1", "status": "active", "period_end": "2026-12-01T00:00:00Z"}},
    )


def act(tool: str, **args: Any) -> ProposedAction:
    return ProposedAction(tool=tool, args=args)


def decide(tool: str, f: PolicyFacts | None = None, route: Any = None, **args: Any) -> tuple[str, list[str]]:
    d = ENGINE.evaluate(act(tool, **args), f or facts(), route)
    return d.decision, d.reason_codes


# --------------------------------------------------------------------------- loading


def test_bundled_pack_loads_with_version_and_digest() -> None:
    assert PACK.version == "support-v1"
    assert PACK.sha256 == hashlib.sha256(DEFAULT_POLICY_PATH.read_bytes()).hexdigest()
    assert PACK.router.min_confidence == 0.6
    assert (PACK.refund.auto_max_cents, PACK.refund.approve_max_cents, PACK.refund.window_days) == (5000, 50000, 30)
    assert PACK.reship.window_days == 30
    assert PACK.allowlist("unknown") == []
    assert PACK.allowlist("knowledge") == ["search_kb"]
    assert "issue_refund" in PACK.allowlist("billing") and "issue_refund" not in PACK.allowlist("orders")
    assert PACK.access.unlock_account.min_identity_level == 1
    assert PACK.access.reset_mfa.decision == "approve"
    assert PACK.cancel_subscription.immediate == "approve"
    b = PACK.budgets
    assert (b.max_tool_calls, b.wall_clock_s, b.max_retries, b.tenant_daily_tokens) == (8, 30, 2, 5_000_000)
    assert (b.user_daily_tokens, b.tenant_daily_runs, b.user_daily_runs, b.quota_alert_ratio) == (500_000, 20_000, 2_000, 0.8)
    assert PACK.approvals.separation_of_duties and PACK.approvals.edits_only_downward


def _pack_text(**replace: str) -> str:
    text = DEFAULT_POLICY_PATH.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_operator_edit_changes_decisions_and_digest(tmp_path: Path) -> None:
    p = tmp_path / "edited.toml"
    p.write_text(_pack_text(**{"auto_max_cents = 5000": "auto_max_cents = 9000", '"support-v1"': '"support-v2"',
                               "max_auto_cents = 5000": "max_auto_cents = 9000"}))
    pack = load_policy(p)
    assert pack.version == "support-v2" and pack.sha256 != PACK.sha256
    d = PolicyEngine(pack, cards()).evaluate(act("issue_refund", order_id="O-1", amount_cents=8999), facts())
    assert d.decision == "execute"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version = ", "not valid TOML"),
        (_pack_text(**{"[router]": "surprise = 1\n[router]"}), "surprise"),
        (_pack_text(**{"min_confidence = 0.6": "min_confidence = 0.6\nmax_confidence = 1"}), "max_confidence"),
        (_pack_text(**{"auto_max_cents = 5000": 'auto_max_cents = "lots"'}), "auto_max_cents"),
        (_pack_text(**{"auto_max_cents = 5000": "auto_max_cents = 60000"}), "must not exceed"),
        (_pack_text(**{"min_confidence = 0.6": "min_confidence = 1.5"}), "min_confidence"),
        (_pack_text(**{'tools = ["search_kb"]': 'tools = ["search_kb", "rm_rf"]'}), "unknown tools"),
        (_pack_text(**{"tools = []": 'tools = ["search_kb"]'}), "routes.unknown"),
        (_pack_text(**{"[routes.knowledge]": "[routes.knowledgebase]"}), "routes"),
        (_pack_text(**{'allowed_statuses = ["placed", "paid"]   # else deny, not_cancellable': 'allowed_statuses = ["lost"]'}), "allowed_statuses"),
        (_pack_text(**{'immediate = "approve"': 'immediate = "maybe"'}), "immediate"),
        ('sha256 = "00"\n' + DEFAULT_POLICY_PATH.read_text(), "sha256"),
        (DEFAULT_POLICY_PATH.read_text().split("[approvals]")[0], "approvals"),
        (_pack_text(**{"user_daily_tokens = 500000": "user_daily_tokens = 5000001"}), "must not exceed tenant_daily_tokens"),
        (_pack_text(**{"user_daily_runs = 2000": "user_daily_runs = 20001"}), "must not exceed tenant_daily_runs"),
        (_pack_text(**{"user_daily_runs = 2000": "user_daily_runs = 0"}), "user_daily_runs"),
        (_pack_text(**{"quota_alert_ratio = 0.8": "quota_alert_ratio = 1.5"}), "quota_alert_ratio"),
        (_pack_text(**{"tenant_daily_runs = 20000      # runs admitted per tenant per UTC day\n": ""}), "tenant_daily_runs"),
    ],
)
def test_bad_policy_files_are_rejected_clearly(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PolicyError) as e:
        load_policy(p, tools=TOOLS)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_pack_is_immutable() -> None:
    with pytest.raises(Exception):
        PACK.refund.auto_max_cents = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- ownership / tools


def test_ownership_is_checked_first() -> None:
    stranger = order(customer_id="C-2", status="shipped", delivered_at=None)
    assert decide("issue_refund", facts({"O-9": stranger}), order_id="O-9", amount_cents=999_999) == (
        "deny",
        ["not_owner"],
    )
    d = ENGINE.evaluate(act("issue_refund", order_id="O-9", amount_cents=1), facts({"O-9": stranger}))
    assert [c.rule for c in d.checks] == ["tool.known", "ownership"]
    assert d.checks[-1].result == "fail" and d.checks[-1].reason_code == "not_owner"


def test_missing_records_are_not_found() -> None:
    assert decide("issue_refund", order_id="O-404", amount_cents=100) == ("deny", ["not_found"])
    assert decide("cancel_subscription", subscription_id="S-404", at="period_end") == ("deny", ["not_found"])
    assert decide("unlock_account", facts(customer=False), customer_id="C-1") == ("deny", ["not_found"])


def test_record_of_another_tenant_is_not_owned() -> None:
    f = facts({"O-1": order(tenant="globex")})
    assert decide("track_shipment", f, order_id="O-1") == ("deny", ["not_owner"])


@pytest.mark.parametrize("tool", ["send_password_reset", "unlock_account", "reset_mfa", "get_customer", "get_account"])
def test_customer_id_must_be_the_ticket_customer(tool: str) -> None:
    assert decide(tool, customer_id="C-2", new_email="x@example.com") == ("deny", ["not_owner"])


def test_subscription_of_someone_else() -> None:
    f = facts(subs={"S-2": {"customer_id": "C-2", "status": "active"}})
    assert decide("cancel_subscription", f, subscription_id="S-2", at="period_end") == ("deny", ["not_owner"])


def test_route_allowlist() -> None:
    assert decide("issue_refund", route="orders", order_id="O-1", amount_cents=100) == ("deny", ["tool_not_allowed"])
    assert decide("issue_refund", route="billing", order_id="O-1", amount_cents=100) == ("execute", [])
    assert decide("search_kb", route="unknown", query="x") == ("deny", ["tool_not_allowed"])
    assert decide("search_kb", route="knowledge", query="x") == ("execute", [])
    assert decide("get_account", route="billing", customer_id="C-1") == ("deny", ["tool_not_allowed"])


def test_unknown_tool_is_denied_even_without_route() -> None:
    assert decide("drop_tables") == ("deny", ["tool_not_allowed"])


def test_reads_execute_when_owned() -> None:
    assert decide("get_order", order_id="O-1") == ("execute", [])
    assert decide("get_customer", customer_id="C-1") == ("execute", [])
    assert decide("get_account", customer_id="C-1") == ("execute", [])
    assert decide("list_payments", order_id="O-1") == ("execute", [])
    assert decide("list_payments", customer_id="C-1") == ("execute", [])
    assert decide("search_kb", query="refund policy") == ("execute", [])
    assert decide("get_order", facts({"O-2": order(customer_id="C-2")}), order_id="O-2") == ("deny", ["not_owner"])


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("issue_refund", {"order_id": "O-1"}),
        ("issue_refund", {"order_id": "O-1", "amount_cents": 0}),
        ("issue_refund", {"order_id": "O-1", "amount_cents": -5}),
        ("issue_refund", {"order_id": "O-1", "amount_cents": "4599"}),
        ("issue_refund", {"order_id": "O-1", "amount_cents": True}),
        ("issue_refund", {"order_id": "O-1", "amount_cents": 12.5}),
        ("issue_refund", {"amount_cents": 100}),
        ("issue_refund", {"order_id": 5001, "amount_cents": 100}),
        ("cancel_order", {}),
        ("update_shipping_address", {"order_id": "O-1"}),
        ("track_shipment", {}),
        ("reship_order", {}),
        ("cancel_subscription", {"subscription_id": "S-1"}),
        ("cancel_subscription", {"subscription_id": "S-1", "at": "tomorrow"}),
        ("unlock_account", {}),
        ("change_email", {"customer_id": "C-1"}),
    ],
)
def test_invalid_args(tool: str, args: dict[str, Any]) -> None:
    assert decide(tool, **args) == ("deny", ["invalid_args"])


# --------------------------------------------------------------------------- refunds


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (1, ("execute", [])),
        (4999, ("execute", [])),
        (5000, ("execute", [])),
        (5001, ("approve", [])),
        (49999, ("approve", [])),
        (50000, ("approve", [])),
        (50001, ("escalate", ["amount_over_agent_limit"])),
        (100000, ("escalate", ["amount_over_agent_limit"])),
    ],
)
def test_refund_tiers_at_their_edges(amount: int, expected: tuple[str, list[str]]) -> None:
    assert decide("issue_refund", order_id="O-1", amount_cents=amount) == expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(days=30), ("execute", [])),
        (timedelta(days=30) - timedelta(seconds=1), ("execute", [])),
        (timedelta(days=30, seconds=1), ("deny", ["outside_refund_window"])),
        (timedelta(days=31), ("deny", ["outside_refund_window"])),
        (timedelta(0), ("execute", [])),
    ],
)
def test_refund_window_is_inclusive_at_the_exact_boundary(age: timedelta, expected: tuple[str, list[str]]) -> None:
    delivered = (NOW - age).isoformat().replace("+00:00", "Z")
    f = facts({"O-1": order(delivered_at=delivered)})
    assert decide("issue_refund", f, order_id="O-1", amount_cents=100) == expected


@pytest.mark.parametrize("status", ["placed", "paid", "shipped"])
def test_refund_needs_a_delivered_order(status: str) -> None:
    f = facts({"O-1": order(status=status, delivered_at=None)})
    assert decide("issue_refund", f, order_id="O-1", amount_cents=100) == ("deny", ["outside_refund_window"])


def test_refund_with_missing_or_bad_delivered_at() -> None:
    for value in (None, "", "not a date"):
        f = facts({"O-1": order(delivered_at=value)})
        assert decide("issue_refund", f, order_id="O-1", amount_cents=100) == ("deny", ["outside_refund_window"])


def test_refund_naive_timestamps_are_utc() -> None:
    f = facts({"O-1": order(delivered_at="2026-10-26T12:00:00")}, now=datetime(2026, 11, 25, 12, 0, 0))
    assert decide("issue_refund", f, order_id="O-1", amount_cents=100) == ("execute", [])


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(6000, ("approve", [])), (5999, ("approve", [])), (6001, ("deny", ["amount_exceeds_refundable"]))],
)
def test_refund_amount_up_to_what_is_still_refundable(amount: int, expected: tuple[str, list[str]]) -> None:
    f = facts({"O-1": order(total_cents=10000, refunded_cents=4000)})
    assert decide("issue_refund", f, order_id="O-1", amount_cents=amount) == expected


def test_fully_refunded_order() -> None:
    f = facts({"O-1": order(total_cents=3999, refunded_cents=3999)})
    assert decide("issue_refund", f, order_id="O-1", amount_cents=1) == ("deny", ["amount_exceeds_refundable"])


def test_window_is_checked_before_amount() -> None:
    f = facts({"O-1": order(delivered_at=(NOW - timedelta(days=40)).isoformat(), total_cents=10)})
    assert decide("issue_refund", f, order_id="O-1", amount_cents=999) == ("deny", ["outside_refund_window"])


def test_refund_records_every_rule_with_evidence() -> None:
    d = ENGINE.evaluate(act("issue_refund", order_id="O-1", amount_cents=5001), facts(), "billing")
    assert [c.rule for c in d.checks] == [
        "tool.known",
        "route.allowlist",
        "ownership",
        "args",
        "refund.window",
        "refund.refundable",
        "refund.tier",
        "refund.velocity",
    ]
    assert all(c.result == "pass" for c in d.checks)
    assert "5001" in d.checks[-2].detail and "50000" in d.checks[-2].detail
    over = ENGINE.evaluate(act("issue_refund", order_id="O-1", amount_cents=50001), facts())
    assert over.checks[-1].result == "fail" and over.checks[-1].reason_code == "amount_over_agent_limit"


# --------------------------------------------------------------------------- orders


@pytest.mark.parametrize(
    ("status", "cancel", "address"),
    [
        ("placed", ("execute", []), ("execute", [])),
        ("paid", ("execute", []), ("execute", [])),
        ("shipped", ("deny", ["not_cancellable"]), ("deny", ["already_shipped"])),
        ("delivered", ("deny", ["not_cancellable"]), ("deny", ["already_shipped"])),
    ],
)
def test_order_status_rules(status: str, cancel: tuple[str, list[str]], address: tuple[str, list[str]]) -> None:
    f = facts({"O-1": order(status=status)})
    assert decide("cancel_order", f, order_id="O-1") == cancel
    assert decide("update_shipping_address", f, order_id="O-1", new_address="1 Main St") == address


@pytest.mark.parametrize("status", ["placed", "paid", "shipped", "delivered"])
def test_tracking_is_read_only_and_executes(status: str) -> None:
    assert decide("track_shipment", facts({"O-1": order(status=status)}), order_id="O-1") == ("execute", [])


@pytest.mark.parametrize(
    ("status", "age", "expected"),
    [
        ("delivered", timedelta(days=5), ("approve", [])),
        ("delivered", timedelta(days=30), ("approve", [])),
        ("delivered", timedelta(days=30, seconds=1), ("deny", ["outside_refund_window"])),
        ("delivered", timedelta(days=46), ("deny", ["outside_refund_window"])),
        ("shipped", None, ("deny", ["outside_refund_window"])),
    ],
)
def test_reship_window(status: str, age: timedelta | None, expected: tuple[str, list[str]]) -> None:
    delivered = (NOW - age).isoformat() if age is not None else None
    f = facts({"O-1": order(status=status, delivered_at=delivered)})
    assert decide("reship_order", f, order_id="O-1") == expected


# --------------------------------------------------------------------------- access & subscriptions


@pytest.mark.parametrize(
    ("tool", "level", "expected"),
    [
        ("send_password_reset", 0, ("execute", [])),
        ("send_password_reset", 2, ("execute", [])),
        ("unlock_account", 0, ("escalate", ["identity_not_verified"])),
        ("unlock_account", 1, ("execute", [])),
        ("unlock_account", 2, ("execute", [])),
        ("reset_mfa", 0, ("escalate", ["identity_not_verified"])),
        ("reset_mfa", 1, ("escalate", ["identity_not_verified"])),
        ("reset_mfa", 2, ("approve", [])),
        ("change_email", 1, ("escalate", ["identity_not_verified"])),
        ("change_email", 2, ("approve", [])),
        ("change_email", 3, ("approve", [])),
    ],
)
def test_access_identity_levels(tool: str, level: int, expected: tuple[str, list[str]]) -> None:
    f = facts(identity_level=level)
    assert decide(tool, f, route="access", customer_id="C-1", new_email="new@example.com") == expected


@pytest.mark.parametrize(("at", "expected"), [("period_end", ("execute", [])), ("immediate", ("approve", []))])
def test_subscription_cancel_timing(at: str, expected: tuple[str, list[str]]) -> None:
    assert decide("cancel_subscription", route="billing", subscription_id="S-1", at=at) == expected


# --------------------------------------------------------------------------- plans


def test_plan_overall_is_the_strictest_decision() -> None:
    f = facts({"O-1": order(), "O-2": order(status="placed"), "O-3": order(status="shipped")})
    ex = act("track_shipment", order_id="O-1")
    ap = act("reship_order", order_id="O-1")
    es = act("issue_refund", order_id="O-1", amount_cents=60000)
    dn = act("cancel_order", order_id="O-3")
    assert ENGINE.evaluate_plan([], f, "orders").overall == "execute"
    assert ENGINE.evaluate_plan([ex], f, None).overall == "execute"
    assert ENGINE.evaluate_plan([ex, ap], f, None).overall == "approve"
    plan = ENGINE.evaluate_plan([ex, ap, es], f, None)
    assert (plan.overall, plan.reason_codes) == ("escalate", ["amount_over_agent_limit"])
    plan = ENGINE.evaluate_plan([dn, es, ap], f, None)
    assert plan.overall == "deny"
    assert plan.reason_codes == ["not_cancellable", "amount_over_agent_limit"]
    assert [d.decision for d in plan.per_action] == ["deny", "escalate", "approve"]
    assert plan.policy_version == "support-v1" and plan.policy_sha256 == PACK.sha256


def test_plan_enforces_the_route_allowlist() -> None:
    plan = ENGINE.evaluate_plan([act("issue_refund", order_id="O-1", amount_cents=100)], facts(), "orders")
    assert (plan.overall, plan.reason_codes) == ("deny", ["tool_not_allowed"])


def test_plan_reason_codes_are_deduplicated() -> None:
    f = facts({"O-1": order(customer_id="C-2"), "O-2": order(customer_id="C-3")})
    plan = ENGINE.evaluate_plan(
        [act("cancel_order", order_id="O-1"), act("cancel_order", order_id="O-2")], f, "orders"
    )
    assert plan.reason_codes == ["not_owner"]


def test_injection_flag_escalates_side_effects_and_never_raises_authority() -> None:
    refund = act("issue_refund", order_id="O-1", amount_cents=100)
    plan = ENGINE.evaluate_plan([act("get_order", order_id="O-1"), refund], facts(), "billing", injection_flagged=True)
    assert plan.overall == "escalate"
    assert plan.reason_codes == ["suspected_prompt_injection"]
    assert [d.decision for d in plan.per_action] == ["execute", "escalate"]
    assert plan.per_action[1].checks[-1].rule == "injection"
    # a denied action stays denied: the flag only ever lowers authority
    deny = ENGINE.evaluate_plan(
        [act("cancel_order", order_id="O-1")], facts(), "orders", injection_flagged=True
    )
    assert deny.overall == "deny"
    assert deny.reason_codes == ["suspected_prompt_injection", "not_cancellable"]


def test_injection_flag_with_reads_only_still_answers() -> None:
    plan = ENGINE.evaluate_plan([act("track_shipment", order_id="O-1")], facts(), "orders", injection_flagged=True)
    assert (plan.overall, plan.reason_codes) == ("execute", [])


def test_plan_larger_than_the_tool_call_budget() -> None:
    reads = [act("get_order", order_id="O-1")] * 9
    plan = ENGINE.evaluate_plan(reads, facts(), "orders")
    assert (plan.overall, plan.reason_codes) == ("escalate", ["budget_exceeded"])
    assert ENGINE.evaluate_plan(reads[:8], facts(), "orders").overall == "execute"


# --------------------------------------------------------------------------- demo data

# (route, tool, args) a correct planner proposes for each demo ticket with an action decision.
DEMO_ACTIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "T-1": ("billing", "issue_refund", {"order_id": "O-5001", "amount_cents": 4599}),
    "T-3": ("billing", "issue_refund", {"order_id": "O-5007", "amount_cents": 74900}),
    "T-5": ("orders", "cancel_order", {"order_id": "O-5009"}),
    "T-6": ("billing", "cancel_subscription", {"subscription_id": "S-9003", "at": "immediate"}),
    "T-8": ("billing", "issue_refund", {"order_id": "O-5002", "amount_cents": 8999}),
    "T-10": ("orders", "track_shipment", {"order_id": "O-5008"}),
    "T-13": ("orders", "reship_order", {"order_id": "O-5015"}),
    "T-14": ("orders", "reship_order", {"order_id": "O-5014"}),
    "T-16": ("access", "send_password_reset", {"customer_id": "C-1003"}),
    "T-17": ("access", "change_email", {"customer_id": "C-1007", "new_email": "gus.lima@newmail.example"}),
    "T-18": ("billing", "cancel_subscription", {"subscription_id": "S-9002", "at": "period_end"}),
    "T-19": ("access", "unlock_account", {"customer_id": "C-1004"}),
    "T-20": ("billing", "issue_refund", {"order_id": "O-5016", "amount_cents": 2000}),
    "T-21": ("access", "reset_mfa", {"customer_id": "C-1006"}),
    "T-22": ("orders", "update_shipping_address", {"order_id": "O-5012", "new_address": "48 Harbour Road"}),
    "T-23": ("billing", "issue_refund", {"order_id": "O-5005", "amount_cents": 15000}),
    "T-24": ("access", "unlock_account", {"customer_id": "C-1005"}),
    "T-25": ("billing", "issue_refund", {"order_id": "O-5004", "amount_cents": 2599}),
    "T-26": ("billing", "issue_refund", {"order_id": "O-5003", "amount_cents": 3499}),
    "T-28": ("orders", "update_shipping_address", {"order_id": "O-5013", "new_address": "9 Birch Lane"}),
    "T-29": ("billing", "issue_refund", {"order_id": "O-5006", "amount_cents": 7500}),
    "T-30": ("orders", "cancel_order", {"order_id": "O-5011"}),
    # injection tickets: the underlying action would execute; the flag must escalate it
    "T-9": ("orders", "cancel_order", {"order_id": "O-5018"}),
    "T-11": ("billing", "issue_refund", {"order_id": "O-5017", "amount_cents": 2999}),
}


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DEMO / name).read_text().splitlines() if line.strip()]


def test_demo_expectations() -> None:
    fixtures = json.loads((DEMO / "fixtures.json").read_text())
    tickets = {t["id"]: t for t in _jsonl("tickets.jsonl")}
    expected = {e["ticket_id"]: e for e in _jsonl("expected.jsonl")}
    flagged = {"T-9", "T-11"}
    for tid, (route, tool, args) in DEMO_ACTIONS.items():
        exp = expected[tid]
        f = PolicyFacts.from_fixtures(fixtures, tickets[tid]["customer_id"], NOW)
        plan = ENGINE.evaluate_plan([act(tool, **args)], f, route, injection_flagged=tid in flagged)
        if tid in flagged:
            assert (plan.overall, plan.reason_codes) == ("escalate", exp["reason_codes"]), tid
            continue
        assert exp["tool"] == tool and exp["route"] == route, tid
        assert plan.overall == exp["decision"], tid
        assert plan.reason_codes == exp["reason_codes"], tid
        if exp["amount_cents"] is not None:
            assert args["amount_cents"] == exp["amount_cents"], tid


# --------------------------------------------------------------------------- approvals


@pytest.mark.parametrize(
    ("requester", "reviewer", "role", "tenant", "codes"),
    [
        ("u-req", "u-rev", "approver", "acme", []),
        ("u-req", "u-rev", "requester", "acme", ["not_approver"]),
        ("u-req", "u-rev", "admin", "acme", ["not_approver"]),
        ("u-req", "u-rev", "approver", "globex", ["wrong_tenant"]),
        ("u-req", "u-rev", "approver", "", ["wrong_tenant"]),
        ("u-req", "u-req", "approver", "acme", ["separation_of_duties"]),
        ("u-req", "", "approver", "acme", ["separation_of_duties"]),
        ("u-req", "u-req", "requester", "globex", ["not_approver", "wrong_tenant", "separation_of_duties"]),
    ],
)
def test_check_reviewer(requester: str, reviewer: str, role: str, tenant: str, codes: list[str]) -> None:
    assert check_reviewer(requester, reviewer, role, tenant, "acme", PACK.approvals) == codes
    assert ENGINE.check_reviewer(requester, reviewer, role, tenant, "acme") == codes


def _approvals(**changes: Any) -> ApprovalPolicy:
    """The shipped pack's ``[approvals]`` with some rules changed (validated again)."""
    return ApprovalPolicy.model_validate({**PACK.approvals.model_dump(), **changes})


def test_separation_of_duties_follows_the_pack() -> None:
    relaxed = _approvals(separation_of_duties=False)
    assert check_reviewer("u1", "u1", "approver", "acme", "acme", relaxed) == []
    admins = _approvals(approver_roles=["approver", "admin"])
    assert check_reviewer("u1", "u2", "admin", "acme", "acme", admins) == []


@pytest.mark.parametrize(
    ("approvals", "fragment"),
    [
        ('approver_roles = ["aprover"]', "approver_roles"),
        ("approver_roles = []", "approver_roles"),
        ('separation_of_duties = "yes"', "separation_of_duties"),
    ],
)
def test_bad_approval_rules_are_rejected(tmp_path: Path, approvals: str, fragment: str) -> None:
    """A misspelt role would lock every reviewer out: the pack is refused on load instead."""
    text = DEFAULT_POLICY_PATH.read_text()
    line = next(x for x in text.splitlines() if x.startswith(approvals.split(" =")[0] + " ="))
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(line, approvals))
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    assert fragment in str(e.value)


def test_approval_rules_have_no_silent_default(tmp_path: Path) -> None:
    text = DEFAULT_POLICY_PATH.read_text()
    line = next(x for x in text.splitlines() if x.startswith("edits_only_downward ="))
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(line, ""))
    with pytest.raises(PolicyError, match="edits_only_downward"):
        load_policy(p)


REFUND = act("issue_refund", order_id="O-1", amount_cents=8999, reason="damaged")


@pytest.mark.parametrize(
    ("edit", "codes"),
    [
        ({"amount_cents": 5000}, []),
        ({"amount_cents": 1}, []),
        ({"amount_cents": 8999}, []),
        ({}, []),
        ({"order_id": "O-1", "amount_cents": 4000}, []),
        ({"amount_cents": 9000}, ["edit_raises_amount"]),
        ({"amount_cents": 0}, ["edit_not_allowed"]),
        ({"amount_cents": -1}, ["edit_not_allowed"]),
        ({"amount_cents": "5000"}, ["edit_not_allowed"]),
        ({"amount_cents": 4999.0}, ["edit_not_allowed"]),
        ({"order_id": "O-2"}, ["edit_not_allowed"]),
        ({"reason": "other"}, ["edit_not_allowed"]),
        ({"tool": "cancel_order"}, ["edit_not_allowed"]),
        ({"note": "hi"}, ["edit_not_allowed"]),
        ({"order_id": "O-2", "amount_cents": 9999}, ["edit_not_allowed", "edit_raises_amount"]),
    ],
)
def test_check_edit(edit: dict[str, Any], codes: list[str]) -> None:
    assert check_edit(REFUND, edit, PACK.approvals) == codes
    assert ENGINE.check_edit(REFUND, edit) == codes


def test_upward_edits_follow_the_pack() -> None:
    assert check_edit(REFUND, {"amount_cents": 9000}, _approvals(edits_only_downward=False)) == []


def test_edited_plan_is_validated_again() -> None:
    assert ENGINE.evaluate(REFUND, facts()).decision == "approve"
    edited = apply_edit(REFUND, {"amount_cents": 5000})
    assert edited.tool == REFUND.tool and edited.args["reason"] == "damaged"
    assert ENGINE.evaluate(edited, facts()).decision == "execute"


def test_policy_pack_from_toml_string() -> None:
    pack = PolicyPack.from_toml(DEFAULT_POLICY_PATH.read_text())
    assert pack.sha256 == PACK.sha256
