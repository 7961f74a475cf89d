"""Personal data minimisation: what a remote model sees of a customer.

Names, emails, phone numbers and postal addresses are replaced by references before a
payload leaves the process, and the references in the model's answer are put back
afterwards, so an extracted new email or a planned new address still carries the
customer's real value while the model never saw it. Known values come from the records
in the payload (the customer's name and email, the orders' shipping addresses); free text
is scanned with :mod:`guards.dlp`'s email and phone patterns and a street-address pattern.
Card numbers and secrets are redacted outright (:func:`guards.dlp.redact_text`): no
answer needs them back. keel's own ids (``O-…``, ``C-…``), amounts and dates stay: the
model needs them and they identify nobody outside keel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from guards.dlp import _EMAIL, _PHONE_INTL, _PHONE_US, redact_text  # the one definition of these patterns

__all__ = ["Minimizer"]

_ADDRESS = re.compile(
    r"\b\d{1,6}\s+(?:[A-Z][A-Za-z'.-]*\s+){1,4}"
    r"(?:St|Street|Rd|Road|Ave|Avenue|Ln|Lane|Blvd|Boulevard|Dr|Drive|Way|Ct|Court|Pl|Place|Terrace|Square|Close|Row)\b\.?"
    r"(?:,?\s+[A-Z0-9][A-Za-z0-9'.-]*(?:\s+[A-Z0-9][A-Za-z0-9'.-]*)*)*"
)
_NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_NAMES_IN_TEXT = (  # a person naming themselves: "my name is …", "Gus Lima here", a sign-off
    re.compile(rf"(?i:\bmy name is|\bthis is)\s+({_NAME}(?:\s+{_NAME}){{0,2}})"),
    re.compile(rf"(?i:\bI am|\bI'm)\s+({_NAME}\s+{_NAME}(?:\s+{_NAME})?)\b"),
    re.compile(rf"\b({_NAME}\s+{_NAME})\s+here\b"),
    re.compile(rf"(?i:regards|thanks|thank you|cheers|best|sincerely|br),?\s*\n?\s*[-—–]*\s*({_NAME}(?:\s+{_NAME})?)\s*[.!]?\s*$"),
    re.compile(rf"(?m)^\s*[-—–]+\s*({_NAME}(?:\s+{_NAME})?)\s*$"),
)
_PERSONAL_KEYS = {"name": "name", "full_name": "name", "email": "email", "phone": "phone",
                  "shipping_address": "address", "address": "address", "new_address": "address"}


@dataclass
class Minimizer:
    """One payload's references: ``minimize`` the request, ``restore`` the answer."""

    _by_value: dict[str, str] = field(default_factory=dict)
    _by_ref: dict[str, str] = field(default_factory=dict)

    def _ref(self, kind: str, value: str) -> str:
        value = value.strip()
        ref = self._by_value.get(value)
        if ref is None:
            n = sum(1 for r in self._by_ref if r.startswith((f"[{kind} ", f"{kind}")))
            ref = f"{kind}{n + 1}@redacted.invalid" if kind == "email" else f"[{kind} {n + 1}]"
            self._by_value[value] = ref
            self._by_ref[ref] = value
        return ref

    def minimize(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` with personal data replaced by references (a new object)."""
        records: list[Any] = [payload.get("customer")]
        records += list(payload.get("orders") or []) + list(payload.get("subscriptions") or [])
        records += list((payload.get("named_orders") or {}).values())
        for record in records:  # the people's records only: a tool card's ``name`` is no person's
            if isinstance(record, dict):
                for key, value in record.items():
                    if key in _PERSONAL_KEYS and isinstance(value, str) and len(value.strip()) >= 3:
                        self._ref(_PERSONAL_KEYS[key], value)
        self._names_in(payload.get("ticket"))
        return self._replace(payload)

    def _names_in(self, ticket: Any) -> None:
        """Names a customer wrote about themselves in the ticket (no record names them there)."""
        if not isinstance(ticket, dict):
            return
        for text in (ticket.get("subject"), ticket.get("body")):
            for rx in _NAMES_IN_TEXT:
                for m in rx.finditer(text or ""):
                    self._ref("name", m.group(1))

    def _replace(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self._replace(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._replace(v) for v in node]
        if isinstance(node, str):
            return self._text(node)
        return node

    def _text(self, text: str) -> str:
        # personal data → sealed markers (so the card/secret redaction cannot touch them) → references
        sealed: list[str] = []

        def seal(ref: str) -> str:
            sealed.append(ref)
            return f"\x00{len(sealed) - 1}\x00"

        for value in sorted(self._by_value, key=len, reverse=True):  # longest first: an address holds a name
            if value in text:
                text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", lambda _m, v=value: seal(self._by_value[v]), text)
        text = _ADDRESS.sub(lambda m: seal(self._ref("address", m.group(0))), text)
        text = _EMAIL.sub(lambda m: seal(self._ref("email", m.group(0))), text)
        for rx in (_PHONE_INTL, _PHONE_US):
            text = rx.sub(lambda m: seal(self._ref("phone", m.group(0))) if len(re.sub(r"\D", "", m.group(0))) >= 8
                          else m.group(0), text)
        text = redact_text(text)  # cards and secrets: gone for good
        return re.sub(r"\x00(\d+)\x00", lambda m: sealed[int(m.group(1))], text)

    def restore(self, answer: Any) -> Any:
        """The model's answer with every reference put back (anything else unchanged)."""
        if isinstance(answer, dict):
            return {k: self.restore(v) for k, v in answer.items()}
        if isinstance(answer, list):
            return [self.restore(v) for v in answer]
        if isinstance(answer, str) and self._by_ref:
            for ref in sorted(self._by_ref, key=len, reverse=True):
                if ref in answer:
                    answer = answer.replace(ref, self._by_ref[ref])
            return answer
        return answer
