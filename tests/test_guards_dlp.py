"""Redaction of personal data and secrets, and the logging filter."""

from __future__ import annotations

import io
import logging
from collections import namedtuple

import pytest

from guards.dlp import RedactingFilter, install_redaction, luhn_ok, redact

# fake secrets, built at run time so no secret-looking literal sits in the repo
KEEL_KEY = "keel_" + "3f9aK2mZ81pQxYw7LrT0uV"
SK_KEY = "sk-" + "proj-abcDEF1234567890xyzXYZ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ana@example.com please", "write to [email] please"),
        ("ben.carter+orders@mail.example.co.uk.", "[email]."),
        ("new email: gus.lima@newmail.example", "new email: [email]"),
        ("card 4111 1111 1111 1111 exp 12/28", "card [card] exp 12/28"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("card 4242424242424242", "card [card]"),
        ("amex 3782 822463 10005", "amex [card]"),
        ("13 digits 4222222222222", "13 digits [card]"),
        ("call +1 (555) 123-4567", "call [phone]"),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("tel +33 1 23 45 67 89", "tel [phone]"),
        ("tel +4915123456789", "tel [phone]"),
        ("call 555-123-4567", "call [phone]"),
        ("call (555) 123-4567", "call [phone]"),
        ("call 555.123.4567", "call [phone]"),
        ("call 1-800-555-0199", "call [phone]"),
        (f"key {KEEL_KEY}", "key [secret]"),
        (f"OPENAI {SK_KEY} end", "OPENAI [secret] end"),
        ("Authorization: Bearer abc.def-123456789XYZ", "Authorization: Bearer [secret]"),
        ("curl -H 'x-api-key: abcd1234efgh'", "curl -H 'x-api-key: [secret]'"),
        ("password=hunter22 next", "password=[secret] next"),
        ('{"api_key": "zzz12345"}', '{"api_key": "[secret]"}'),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "jwt [secret]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [secret]"),
    ],
)
def test_redacts(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order O-5001 for 4599 cents",
        "ticket T-11 and T-9",
        "delivered_at 2026-11-05T15:00:00Z, now 2026-11-25T12:00:00+00:00",
        "epoch 1764072000, zip 43004, ZIP+4 98402-1234",
        "plan_hash " + "ab12" * 16,
        "thread 550e8400-e29b-41d4-a716-446655440000",
        "luhn-invalid 4111 1111 1111 1112",
        "table keel_tenant_tokens, tool send_password_reset",
        "subscription S-9001 customer C-1001 article KB-3",
        "refund of $75.00 on 2026-11-25, 10:00-12:00",
        "send me a password reset link",
        "the desk-lamp-shade-2000 model",
        "48 Harbour Road, Apt 3, Portland, ME 04101",
        "idempotency key 7f0c2d2e6b5c4a8f9d1e3b2a",
        "version 1.2.3.4 build 20261125",
    ],
)
def test_leaves_identifiers_alone(text: str) -> None:
    assert redact(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


def test_redaction_is_idempotent() -> None:
    text = f"ana@example.com 4111 1111 1111 1111 +1 (555) 123-4567 {KEEL_KEY} password: x1234567"
    once = redact(text)
    assert redact(once) == once
    assert "[email]" in once and "[card]" in once and "[phone]" in once and "[secret]" in once


def test_recursive_structures() -> None:
    Pair = namedtuple("Pair", "a b")
    value = {
        "customer": {"email": "ana@example.com", "identity_level": 2},
        "notes": ["call 555-123-4567", ("4111111111111111", 4599)],
        "pair": Pair("x@y.io", 3),
        "amount_cents": 4599,
        "order_id": "O-5001",
        "password": "plain",
        "access_token": "whatever",
        "x-api-key": "k",
        "tokens": 1234,
        "prompt_tokens": 5,
        "ok": None,
    }
    out = redact(value)
    assert out == {
        "customer": {"email": "[email]", "identity_level": 2},
        "notes": ["call [phone]", ("[card]", 4599)],
        "pair": Pair("[email]", 3),
        "amount_cents": 4599,
        "order_id": "O-5001",
        "password": "[secret]",
        "access_token": "[secret]",
        "x-api-key": "[secret]",
        "tokens": 1234,
        "prompt_tokens": 5,
        "ok": None,
    }
    assert isinstance(out["pair"], Pair)
    assert value["customer"]["email"] == "ana@example.com"  # input untouched


def test_non_text_values_pass_through() -> None:
    for v in (None, 4599, 1.5, True, b"ana@example.com"):
        assert redact(v) == v


def _capture(logger: logging.Logger) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return handler, stream


def test_filter_redacts_message_and_args() -> None:
    logger = logging.getLogger("keel.test.dlp.args")
    handler, stream = _capture(logger)
    logger.addFilter(RedactingFilter())
    logger.info("refund %s for %s (%d cents) key=%s", "O-5001", "ana@example.com", 4599, KEEL_KEY)
    logger.info({"email": "ana@example.com"})
    logger.info("card %(card)s", {"card": "4111 1111 1111 1111"})
    lines = stream.getvalue().splitlines()
    assert lines == [
        "refund O-5001 for [email] (4599 cents) key=[secret]",
        "{'email': '[email]'}",
        "card [card]",
    ]
    logger.removeHandler(handler)


def test_filter_redacts_tracebacks() -> None:
    logger = logging.getLogger("keel.test.dlp.exc")
    handler, stream = _capture(logger)
    install_redaction(logger)
    try:
        raise ValueError("bad email ana@example.com")
    except ValueError:
        logger.exception("failed for %s", "ben@example.com")
    out = stream.getvalue()
    assert "ana@example.com" not in out and "ben@example.com" not in out
    assert "failed for [email]" in out and "ValueError: bad email [email]" in out
    logger.removeHandler(handler)


def test_install_redaction_covers_child_loggers_and_is_idempotent() -> None:
    parent = logging.getLogger("keel.test.dlp.parent")
    handler, stream = _capture(parent)
    first = install_redaction(parent)
    second = install_redaction(parent)
    assert first is second
    assert sum(isinstance(f, RedactingFilter) for f in parent.filters) == 1
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    child = logging.getLogger("keel.test.dlp.parent.child")
    child.warning("call me at +1 (555) 123-4567")
    assert stream.getvalue().strip() == "call me at [phone]"
    parent.removeHandler(handler)


def test_install_redaction_by_name() -> None:
    flt = install_redaction("keel.test.dlp.byname")
    assert flt in logging.getLogger("keel.test.dlp.byname").filters


def test_the_audit_log_cannot_be_built_without_the_dlp_redactor_and_keels_applies_it(tmp_path):
    """The audit log (ground floor) is handed the DLP guard's redaction by keel's wiring; there
    is no default, so no audit log can store personal data unredacted by omission."""
    from engine.runtime import Runtime
    from keel.audit import AuditLog
    from keel.config import Settings
    from keel.db import open_database

    with pytest.raises(TypeError):
        AuditLog(open_database(f"sqlite:///{tmp_path / 'a.db'}"))  # type: ignore[call-arg]
    rt = Runtime(Settings(data_dir=tmp_path / "rt", plan_signing_key="k"))
    try:
        rt.audit.append("acme", "admin", actor="cli", data={"note": "mail ana@example.com", "password": "hunter2x"})
        assert rt.audit.list("acme")[-1].data == {"note": "mail [email]", "password": "[secret]"}
    finally:
        rt.close()
