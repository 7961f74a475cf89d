"""Fixtures and tickets parsing: valid records kept, bad ones reported by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.types import Ticket
from tools.fixtures import (
    Customer,
    Fixtures,
    LineError,
    Order,
    demo_fixtures,
    parse_fixtures_text,
    parse_tickets_lines,
)

DEMO = Path(__file__).resolve().parents[1] / "keel" / "demo"

GOOD_CUSTOMER = '{"id": "C-1", "name": "Ana", "email": "ana@example.com", "identity_level": 2, "account": {"locked": false, "mfa_enabled": true}}'
GOOD_ORDER = (
    '{{"id": "{id}", "customer_id": "{cust}", "status": "delivered", "total_cents": 4599, "refunded_cents": 0,'
    ' "currency": "USD", "placed_at": "2026-11-01T10:00:00Z", "delivered_at": "2026-11-05T15:00:00Z",'
    ' "carrier_status": "Delivered", "shipping_address": "12 Elm St"}}'
)

# One record a line, so each record's line number is plain to see.
MIXED = "\n".join(
    [
        "{",  # 1
        '  "tenant": "acme",',  # 2
        '  "customers": [',  # 3
        "    " + GOOD_CUSTOMER + ",",  # 4
        '    {"id": "C-2", "name": "Ben", "email": "b@example.com", "identity_level": 1, "account": {"locked": false, "mfa_enabled": false}, "vip": true},',  # 5 unknown field
        '    {"id": "C-3", "name": "Cy", "email": "c@example.com", "identity_level": "1", "account": {"locked": false, "mfa_enabled": false}}',  # 6 bad type
        "  ],",  # 7
        '  "orders": [',  # 8
        "    " + GOOD_ORDER.format(id="O-1", cust="C-1") + ",",  # 9
        "    " + GOOD_ORDER.format(id="O-2", cust="C-9") + ",",  # 10 unknown customer
        "    " + GOOD_ORDER.format(id="O-1", cust="C-1") + ",",  # 11 duplicate id
        "    " + GOOD_ORDER.format(id="O-3", cust="C-2") + ",",  # 12 owner was rejected above
        "    {",  # 13 multi-line record: reported at its first line
        '      "id": "O-4", "customer_id": "C-1", "status": "returned", "total_cents": 1, "refunded_cents": 0,',
        '      "currency": "USD", "placed_at": "2026-11-01T10:00:00Z", "delivered_at": null,',
        '      "carrier_status": "", "shipping_address": "x"',
        "    }",  # 17
        "  ],",  # 18
        '  "subscriptions": [',  # 19
        '    {"id": "S-1", "customer_id": "C-1", "plan": "pro", "status": "active", "period_end": "2026-12-01T00:00:00"}',  # 20 naive
        "  ],",  # 21
        '  "articles": [',  # 22
        '    {"id": "KB-1", "title": "Refunds", "body": "Refunds within 30 days."},',  # 23
        '    {"id": "KB-2", "title": "No body"}',  # 24
        "  ]",  # 25
        "}",  # 26
    ]
)


def test_demo_fixtures_are_valid() -> None:
    parsed = parse_fixtures_text((DEMO / "fixtures.json").read_text())
    assert parsed.errors == []
    fx = parsed.fixtures
    assert fx is not None and fx.tenant == "acme"
    assert (len(fx.customers), len(fx.orders), len(fx.subscriptions), len(fx.articles)) == (12, 20, 5, 8)
    assert demo_fixtures() == fx


def test_bad_records_are_reported_at_their_line_and_skipped() -> None:
    parsed = parse_fixtures_text(MIXED)
    assert [e.line for e in parsed.errors] == [5, 6, 10, 11, 12, 13, 20, 24]
    messages = {e.line: e.message for e in parsed.errors}
    assert "unknown field 'vip'" in messages[5]
    assert "identity_level" in messages[6]
    assert "unknown customer_id 'C-9'" in messages[10]
    assert "duplicate id 'O-1'" in messages[11]
    assert "status" in messages[13]
    assert "period_end" in messages[20]
    assert "field 'body' is required" in messages[24]
    fx = parsed.fixtures
    assert fx is not None
    assert [c.id for c in fx.customers] == ["C-1"]
    assert [o.id for o in fx.orders] == ["O-1"]
    assert fx.subscriptions == []
    assert [a.id for a in fx.articles] == ["KB-1"]


def test_messages_do_not_echo_values() -> None:
    text = MIXED.replace('"vip": true', '"vip": "s3cr3t-token"')
    parsed = parse_fixtures_text(text)
    assert all("s3cr3t" not in str(e) for e in parsed.errors)


def test_json_syntax_error_reports_its_line_and_yields_nothing() -> None:
    text = MIXED.replace('"plan": "pro",', '"plan": "pro"')  # missing comma on line 20
    parsed = parse_fixtures_text(text)
    assert parsed.fixtures is None
    assert len(parsed.errors) == 1
    assert parsed.errors[0].line == 20
    assert parsed.errors[0].message.startswith("invalid JSON")


def test_compact_file_line_numbers() -> None:
    doc = {"tenant": "t", "customers": [json.loads(GOOD_CUSTOMER)], "orders": [{"id": "O-1"}]}
    parsed = parse_fixtures_text(json.dumps(doc))
    assert [e.line for e in parsed.errors] == [1]
    assert parsed.fixtures is not None and len(parsed.fixtures.customers) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"customers": []}', "field 'tenant' is required"),
        ('{"tenant": 5}', "field 'tenant' must be a non-empty string"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_unusable_top_level(text: str, message: str) -> None:
    parsed = parse_fixtures_text(text)
    assert parsed.fixtures is None
    assert parsed.errors[0].message == message


def test_unknown_top_level_field_and_non_list() -> None:
    parsed = parse_fixtures_text('{\n"tenant": "t",\n"extra": 1,\n"orders": {}\n}')
    assert [(e.line, e.message) for e in parsed.errors] == [
        (3, "unknown field 'extra'"),
        (4, "field 'orders' must be a list"),
    ]
    assert parsed.fixtures == Fixtures(tenant="t")


def test_models_reject_unknown_fields_and_inconsistency() -> None:
    with pytest.raises(ValidationError):
        Customer.model_validate_json(GOOD_CUSTOMER.replace('"id"', '"x": 1, "id"'))
    with pytest.raises(ValidationError):
        Order.model_validate_json(GOOD_ORDER.format(id="O-1", cust="C-1").replace('"refunded_cents": 0', '"refunded_cents": 5000'))
    customer = Customer.model_validate_json(GOOD_CUSTOMER)
    order = Order.model_validate_json(GOOD_ORDER.format(id="O-1", cust="C-404"))
    with pytest.raises(ValidationError, match="unknown customer_id"):
        Fixtures(tenant="t", customers=[customer], orders=[order])
    with pytest.raises(ValidationError, match="duplicate id"):
        Fixtures(tenant="t", customers=[customer, customer])


def test_tickets_lines() -> None:
    lines = [
        '{"id": "T-1", "tenant": "acme", "customer_id": "C-1", "body": "hello"}',
        "",
        '{"id": "T-2", "tenant": "acme", "customer_id": "C-1"}',
        '{"id": "T-3", "tenant": "acme", "customer_id": "C-1", "body": "x", "priority": "high"}',
        '{"id": "T-4", ',
        "[1]",
        '   {"id": "T-5", "tenant": "acme", "customer_id": "C-1", "body": "ok"}  ',
    ]
    out = list(parse_tickets_lines(lines))
    assert [n for n, _ in out] == [1, 3, 4, 5, 6, 7]
    assert isinstance(out[0][1], Ticket) and isinstance(out[-1][1], Ticket)
    errors = [item for _, item in out if isinstance(item, LineError)]
    assert [str(e) for e in errors] == [
        "line 3: field 'body' is required",
        "line 4: unknown field 'priority'",
        "line 5: invalid JSON: Expecting property name enclosed in double quotes (column 15)",
        "line 6: expected a JSON object",
    ]
    assert all("Traceback" not in str(e) for e in errors)


def test_demo_tickets_parse() -> None:
    with (DEMO / "tickets.jsonl").open() as f:
        out = list(parse_tickets_lines(f))
    assert len(out) == 30 and all(isinstance(t, Ticket) for _, t in out)
