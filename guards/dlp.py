"""Data-loss prevention: redact personal data and secrets before they leave the process.

Logs, traces and error messages outlive the run that produced them and are read by
people who should not see customers' emails, card numbers or keel's API keys. The
patterns are deliberately narrow so the identifiers reviewers need stay readable:
order ids (``O-5001``), ticket ids (``T-11``), amounts in cents (``4599``), ISO
timestamps and hex digests are never touched. Card numbers must pass the Luhn check;
phone numbers need their usual separators or a leading ``+``.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, TypeVar
from collections.abc import Callable

__all__ = [
    "Placeholder",
    "PLACEHOLDERS",
    "redact",
    "redact_text",
    "luhn_ok",
    "RedactingFilter",
    "install_redaction",
]

Placeholder = str
"""One of :data:`PLACEHOLDERS`: what a redacted span becomes."""

PLACEHOLDERS: dict[str, Placeholder] = {
    "email": "[email]",
    "card": "[card]",
    "phone": "[phone]",
    "secret": "[secret]",
}
"""Kind of data → the text that replaces it."""

T = TypeVar("T")

# ---- secrets (first: tokens may contain digits or ``@`` that other patterns would split)

_SECRET_TOKENS = re.compile(
    r"""
    \b(?:keel|sk|pk|rk)[-_](?=[A-Za-z_\-]*\d)[A-Za-z0-9_\-]{16,}    # keel_…, sk-…, sk-proj-… (has a digit)
    | \b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{16,}                    # GitHub
    | \bxox[abprs]-[A-Za-z0-9\-]{10,}                                           # Slack
    | \bAKIA[0-9A-Z]{16}\b                                                       # AWS access key id
    | \beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}           # JWT
    """,
    re.VERBOSE,
)
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)([A-Za-z0-9._~+/\-]{12,}=*)")
_KEY_VALUE = re.compile(
    r"""(?ix)
    \b((?:x-)?api[_-]?key|access[_-]?token|refresh[_-]?token|auth[_-]?token|client[_-]?secret
       |secret[_-]?key|signing[_-]?key|password|passwd|pwd|secret|authorization)
    (["']?\s*[:=]\s*["']?)
    (?!\[)((?:basic|bearer)\s+)?([^\s"',;&]{4,})
    """
)
_SENSITIVE_KEY = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|secret|token|api[_-]?key|authorization|cookie|set-cookie|"
    r"client[_-]?secret|signing[_-]?key|card[_-]?number|cvv|cvc)$"
)

# ---- personal data

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
_CARD = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w]|[.,]\d)")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\w)")
_PHONE_US = re.compile(r"(?<![\w(+-])(?:1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])")


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (card numbers pass, most random numbers fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return PLACEHOLDERS["card"] if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group(0)


def _phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return PLACEHOLDERS["phone"] if 8 <= len(digits) <= 15 else m.group(0)


_STEPS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_SECRET_TOKENS, PLACEHOLDERS["secret"]),
    (_BEARER, lambda m: f"{m.group(1)}{m.group(2)}{PLACEHOLDERS['secret']}"),
    (_KEY_VALUE, lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{PLACEHOLDERS['secret']}"),
    (_EMAIL, PLACEHOLDERS["email"]),
    (_PHONE_INTL, _phone),  # before cards: a long "+49 …" number could pass Luhn by chance
    (_CARD, _card),
    (_PHONE_US, PLACEHOLDERS["phone"]),
)


def redact_text(text: str) -> str:
    """``text`` with emails, card numbers, phone numbers and secrets replaced. Idempotent."""
    if len(text) <= _MEMO_MAX_CHARS:
        return _redact_short(text)
    return _redact_text(text)


def _redact_text(text: str) -> str:
    for pattern, repl in _STEPS:
        text = pattern.sub(repl, text)
    return text


_MEMO_MAX_CHARS = 256
"""Strings up to this long are redacted once and remembered: a run's span attributes and audit
payloads repeat the same short values (node, tool and graph names, tenant, thread and run
ids, decisions) many times, each otherwise scanned by all seven patterns again."""

_redact_short = functools.lru_cache(maxsize=4096)(_redact_text)
"""The result is a function of the text alone, so a remembered one is the same answer."""


def redact(value: T) -> T:
    """Redact strings anywhere inside ``value`` (str, dict, list, tuple), recursively.

    Dict values under secret-looking keys (``password``, ``api_key``, ``authorization``, …)
    are replaced whole, since a secret need not look like one. Other types are returned
    unchanged: numbers (amounts, counts) are not personal data here.
    """
    if isinstance(value, str):
        return redact_text(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: _redact_item(k, v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [redact(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, tuple):
        items = [redact(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # type: ignore[return-value]
    return value


def _redact_item(key: Any, value: Any) -> Any:
    if isinstance(key, str) and isinstance(value, str) and value and _SENSITIVE_KEY.match(key):
        return PLACEHOLDERS["secret"]
    return redact(value)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the rendered message (and a formatted traceback).

    The message is rendered (``msg % args``) then redacted, so a secret passed as an
    argument is caught too; ``args`` is cleared so no handler re-renders the original.
    Attach it to *handlers* to cover records propagated from child loggers as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: redact the pieces rather than drop the record
            message = f"{record.msg} {record.args}"
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_redaction(logger: logging.Logger | str | None = None) -> RedactingFilter:
    """Attach one :class:`RedactingFilter` to ``logger`` and each of its handlers.

    Idempotent: a logger or handler that already has a redacting filter keeps it.
    ``None`` means the root logger. Returns the filter in use.
    """
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    flt = next((f for f in target.filters if isinstance(f, RedactingFilter)), None) or RedactingFilter()
    if flt not in target.filters:
        target.addFilter(flt)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
