"""Every tool: happy path with a re-read of the records, strict contracts, last-line invariants."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone, UTC
from typing import Any

import pytest
from pydantic import ValidationError

from keel.db import Database
from tools.backoffice import BackOffice
from tools.fixtures import demo_fixtures
from guards.pack import load_policy
from tools.registry import TOOLS, side_effect_tools, tool_schemas
from tools.runner import ToolContext, ToolResult, ToolRunner

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = "acme"


@pytest.fixture
def bo(tmp_path) -> Iterator[BackOffice]:
    db = Database(f"sqlite:///{tmp_path}/bo.db")
    backoffice = BackOffice(db)
    backoffice.setup()
    backoffice.load_fixtures(demo_fixtures())
    yield backoffice
    db.close()


@pytest.fixture
def call(bo: BackOffice) -> Iterator[Callable[..., ToolResult]]:
    runner = ToolRunner(bo, timeout_s=5)

    def _call(tool: str, customer: str, args: dict[str, Any], tenant: str = T) -> ToolResult:
        ctx = ToolContext(
            tenant=tenant, customer_id=customer, user_id="agent", allowlist=frozenset(TOOLS),
            idempotency_key=uuid.uuid4().hex, correlation_id="test", now=NOW,
        )
        return runner.call(tool, args, ctx)

    yield _call
    runner.close()


Check = Callable[[BackOffice, dict[str, Any]], None]


def _refund_checked(bo: BackOffice, out: dict[str, Any]) -> None:
    assert out["refunded_cents"] == 4599 and out["refundable_cents"] == 0
    assert bo.get_order(T, "O-5001")["refunded_cents"] == 4599
    [refund] = bo.list_refunds(T, "O-5001")
    assert refund["id"] == out["refund_id"] and refund["amount_cents"] == 4599 and refund["reason"] == "broken"


def _cancel_checked(bo: BackOffice, out: dict[str, Any]) -> None:
    assert bo.get_order(T, "O-5009")["status"] == "cancelled"
    assert bo.list_payments(T, "C-1012", "O-5009")[0]["status"] == "voided"


def _reset_checked(bo: BackOffice, out: dict[str, Any]) -> None:
    [reset] = bo.list_password_resets(T, "C-1003")
    assert reset["email"] == "chen.wei@example.com" and out["sent_to"] == "c***@example.com"


HAPPY: list[tuple[str, str, dict[str, Any], Check]] = [
    ("get_customer", "C-1001", {"customer_id": "C-1001"},
     lambda bo, out: out == demo_fixtures().customers[0].model_dump(mode="json") or pytest.fail(str(out))),
    ("get_order", "C-1001", {"order_id": "O-5001"},
     lambda bo, out: out == bo.get_order(T, "O-5001") or pytest.fail(str(out))),
    ("list_payments", "C-1001", {"customer_id": "C-1001"},
     lambda bo, out: [p["order_id"] for p in out["payments"]] == ["O-5001", "O-5016", "O-5010"] or pytest.fail(str(out))),
    ("list_payments", "C-1001", {"customer_id": "C-1001", "order_id": "O-5016"},
     lambda bo, out: [p["amount_cents"] for p in out["payments"]] == [5400] or pytest.fail(str(out))),
    ("track_shipment", "C-1002", {"order_id": "O-5008"},
     lambda bo, out: out == {"order_id": "O-5008", "status": "shipped",
                             "carrier_status": "In transit - arrived at regional facility, Columbus OH"} or pytest.fail(str(out))),
    ("get_account", "C-1004", {"customer_id": "C-1004"},
     lambda bo, out: (out["locked"], out["mfa_enabled"], out["identity_level"]) == (True, False, 1) or pytest.fail(str(out))),
    ("search_kb", "C-1002", {"query": "how do I turn on two-factor authentication for my account?"},
     lambda bo, out: out["results"][0]["id"] == "KB-5" or pytest.fail(str(out))),
    ("search_kb", "C-1011", {"query": "Do you sell gift cards? I'd like to get one for my sister's birthday.", "limit": 5},
     lambda bo, out: out == {"results": []} or pytest.fail(str(out))),
    ("issue_refund", "C-1001", {"order_id": "O-5001", "amount_cents": 4599, "reason": "broken"}, _refund_checked),
    ("cancel_subscription", "C-1006", {"subscription_id": "S-9002", "at": "period_end"},
     lambda bo, out: (out["effective_at"] == "2026-12-10T00:00:00Z"
                      and bo.get_subscription(T, "S-9002")["status"] == "cancels_at_period_end") or pytest.fail(str(out))),
    ("cancel_subscription", "C-1007", {"subscription_id": "S-9003", "at": "immediate"},
     lambda bo, out: (out["effective_at"] == "2026-11-25T12:00:00Z"
                      and bo.get_subscription(T, "S-9003")["status"] == "cancelled") or pytest.fail(str(out))),
    ("cancel_order", "C-1012", {"order_id": "O-5009"}, _cancel_checked),
    ("update_shipping_address", "C-1011", {"order_id": "O-5012", "new_address": "48 Harbour Road, Apt 3, Portland, ME 04101"},
     lambda bo, out: bo.get_order(T, "O-5012")["shipping_address"] == "48 Harbour Road, Apt 3, Portland, ME 04101"
     or pytest.fail(str(out))),
    ("reship_order", "C-1008", {"order_id": "O-5014", "reason": "arrived shattered"},
     lambda bo, out: [r["id"] for r in bo.list_reships(T, "O-5014")] == [out["reship_id"]] or pytest.fail(str(out))),
    ("send_password_reset", "C-1003", {"customer_id": "C-1003"}, _reset_checked),
    ("reset_mfa", "C-1006", {"customer_id": "C-1006"},
     lambda bo, out: bo.get_account(T, "C-1006")["mfa_enabled"] is False or pytest.fail(str(out))),
    ("change_email", "C-1007", {"customer_id": "C-1007", "new_email": "gus.lima@newmail.example"},
     lambda bo, out: bo.get_customer(T, "C-1007")["email"] == "gus.lima@newmail.example" or pytest.fail(str(out))),
    ("unlock_account", "C-1004", {"customer_id": "C-1004"},
     lambda bo, out: bo.get_account(T, "C-1004")["locked"] is False or pytest.fail(str(out))),
]


def test_registry_covers_the_policy_tools() -> None:
    assert set(TOOLS) == {t for routes in load_policy().routes.values() for t in routes.tools}
    assert side_effect_tools() == {"issue_refund", "cancel_subscription", "cancel_order", "update_shipping_address",
                                   "reship_order", "send_password_reset", "reset_mfa", "change_email", "unlock_account"}
    assert {tool for tool, *_ in HAPPY} == set(TOOLS)
    assert all(s.description for s in TOOLS.values())
    assert tool_schemas({"issue_refund"})["issue_refund"]["required"] == ["order_id", "amount_cents"]


@pytest.mark.parametrize(("tool", "customer", "args", "check"), HAPPY, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAPPY)])
def test_happy_path(bo: BackOffice, call, tool: str, customer: str, args: dict[str, Any], check: Check) -> None:
    result = call(tool, customer, args)
    assert result.ok, result
    assert result.attempts == 1 and not result.replayed
    TOOLS[tool].output_model.model_validate(result.output)
    check(bo, result.output)


@pytest.mark.parametrize(("tool", "customer", "args"), [h[:3] for h in HAPPY], ids=[f"{h[0]}-{i}" for i, h in enumerate(HAPPY)])
def test_unknown_fields_are_rejected(call, tool: str, customer: str, args: dict[str, Any]) -> None:
    spec = TOOLS[tool]
    with pytest.raises(ValidationError):
        spec.input_model.model_validate({**args, "unexpected": 1})
    result = call(tool, customer, {**args, "unexpected": "sk-live-secret"})
    assert (result.ok, result.error_code, result.attempts) == (False, "invalid_arguments", 0)
    assert "unexpected" in result.error and "secret" not in result.error
    output = call(tool, customer, args).output
    with pytest.raises(ValidationError):
        spec.output_model.model_validate({**output, "unexpected": 1})


@pytest.mark.parametrize(
    ("tool", "args", "fields"),
    [
        ("issue_refund", {"order_id": "O-5001", "amount_cents": 0}, "amount_cents"),
        ("issue_refund", {"order_id": "O-5001", "amount_cents": -5}, "amount_cents"),
        ("issue_refund", {"order_id": "O-5001", "amount_cents": "100"}, "amount_cents"),
        ("issue_refund", {"order_id": "O-5001", "amount_cents": True}, "amount_cents"),
        ("issue_refund", {"amount_cents": 100}, "order_id"),
        ("change_email", {"customer_id": "C-1001", "new_email": "not-an-email"}, "new_email"),
        ("change_email", {"customer_id": "C-1001", "new_email": "Bob <bob@example.com>"}, "new_email"),
        ("cancel_subscription", {"subscription_id": "S-9001", "at": "tomorrow"}, "at"),
        ("search_kb", {"query": "refund", "limit": 50}, "limit"),
        ("get_order", {"order_id": ""}, "order_id"),
        ("get_order", ["O-5001"], "arguments"),
    ],
)
def test_invalid_arguments_name_fields_only(call, tool: str, args: Any, fields: str) -> None:
    result = call(tool, "C-1001", args)
    assert result.error_code == "invalid_arguments"
    assert result.error == f"invalid arguments: {fields}"


@pytest.mark.parametrize(
    ("tool", "customer", "args", "code"),
    [
        ("issue_refund", "C-1008", {"order_id": "O-5006", "amount_cents": 7500}, "amount_exceeds_refundable"),
        ("issue_refund", "C-1002", {"order_id": "O-5008", "amount_cents": 100}, "not_refundable"),
        ("cancel_order", "C-1004", {"order_id": "O-5011"}, "not_cancellable"),
        ("update_shipping_address", "C-1010", {"order_id": "O-5013", "new_address": "9 Birch Lane, Austin TX"}, "already_shipped"),
        ("reship_order", "C-1002", {"order_id": "O-5008"}, "invalid_state"),
        ("issue_refund", "C-1005", {"order_id": "O-5016", "amount_cents": 2000}, "not_owner"),
        ("cancel_subscription", "C-1001", {"subscription_id": "S-9002", "at": "immediate"}, "not_owner"),
        ("get_customer", "C-1001", {"customer_id": "C-1002"}, "not_owner"),
        ("list_payments", "C-1001", {"customer_id": "C-1001", "order_id": "O-5002"}, "not_owner"),
        ("get_order", "C-1001", {"order_id": "O-404"}, "not_found"),
        ("cancel_subscription", "C-1001", {"subscription_id": "S-404", "at": "immediate"}, "not_found"),
    ],
)
def test_invariants_refuse_without_side_effect(
    bo: BackOffice, call, tool: str, customer: str, args: dict[str, Any], code: str
) -> None:
    before = {t: bo.count_rows(t, T) for t in ("refunds", "reships")}
    orders = [bo.get_order(T, o.id) for o in demo_fixtures().orders]
    result = call(tool, customer, args)
    assert (result.ok, result.error_code) == (False, code)
    assert result.output is None and result.error
    assert {t: bo.count_rows(t, T) for t in before} == before
    assert [bo.get_order(T, o.id) for o in demo_fixtures().orders] == orders


def test_other_tenants_records_are_not_found(bo: BackOffice, call) -> None:
    bo.load_fixtures(demo_fixtures().model_copy(update={"tenant": "globex", "orders": []}))
    assert call("get_order", "C-1001", {"order_id": "O-5001"}, tenant="globex").error_code == "not_found"
    assert call("issue_refund", "C-1001", {"order_id": "O-5001", "amount_cents": 1}, tenant="globex").error_code == "not_found"
    assert call("get_order", "C-1001", {"order_id": "O-5001"}, tenant="nobody").error_code == "not_found"
    assert bo.get_order(T, "O-5001")["refunded_cents"] == 0


def test_subscription_transitions(bo: BackOffice, call) -> None:
    first = call("cancel_subscription", "C-1001", {"subscription_id": "S-9001", "at": "period_end"})
    assert first.output["status"] == "cancels_at_period_end"
    again = call("cancel_subscription", "C-1001", {"subscription_id": "S-9001", "at": "period_end"})
    assert again.error_code == "not_cancellable"
    now = call("cancel_subscription", "C-1001", {"subscription_id": "S-9001", "at": "immediate"})
    assert now.output["status"] == "cancelled"
    assert bo.get_subscription(T, "S-9001")["status"] == "cancelled"


def test_partial_refunds_stop_at_the_total(bo: BackOffice, call) -> None:
    assert call("issue_refund", "C-1011", {"order_id": "O-5005", "amount_cents": 10000}).output["refundable_cents"] == 5000
    assert call("issue_refund", "C-1011", {"order_id": "O-5005", "amount_cents": 5001}).error_code == "amount_exceeds_refundable"
    assert call("issue_refund", "C-1011", {"order_id": "O-5005", "amount_cents": 5000}).output["refundable_cents"] == 0
    assert bo.get_order(T, "O-5005")["refunded_cents"] == 20000
    assert len(bo.list_refunds(T, "O-5005")) == 2
