"""Governed long-term memory: what the agent may remember about a customer, and for how long.

The agent only *proposes* a memory write; this module decides, pure and deterministic:

1. **By data class.** Every proposal names one class. The policy pack's ``[memory]`` section
   lists the classes a tenant may keep and the retention of each (days); any other class
   (``payment_details``, ``credentials``, a typo) is rejected ``class_not_allowed``, and a
   pack without ``[memory]`` keeps nothing.
2. **By a never-store screen.** Whatever the class, a proposal whose keys or values carry a
   card number, a password, a one-time code or an MFA secret is rejected, as is one carrying
   an email address or phone number: the back office is the system of record for contact
   details, and a second copy in memory would go stale and outlive an erasure request.
   The card, secret, email and phone detectors are the DLP guard's (:mod:`guards.dlp`);
   one-time codes and MFA secrets are not personal data the DLP guard redacts from logs,
   so their patterns live here.

The classes (kept small on purpose, each with a reason to exist):

- ``preference``: how the customer likes to be served (language, a preferred channel).
- ``contact_channel``: the channel the customer wrote through (email, chat); the channel,
  never the address.
- ``interaction_summary``: what a past run did (route, outcome, reason codes, actions); lets
  a later run see a repeat contact without reading old checkpoints.
- ``case_fact``: a fact about an open case (an escalation waiting for a person); short-lived.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from guards.dlp import PLACEHOLDERS, redact, redact_text
from keel.types import StrictModel

__all__ = [
    "MEMORY_CLASSES",
    "MemoryClass",
    "MemoryPolicy",
    "MemoryProposal",
    "MemoryVerdict",
    "RejectReason",
    "never_store_findings",
    "judge",
    "proposal_digest",
]

MemoryClass = Literal["preference", "contact_channel", "interaction_summary", "case_fact"]
"""The data classes keel knows (see the module docstring); a pack may allow a subset."""

MEMORY_CLASSES: tuple[str, ...] = ("preference", "contact_channel", "interaction_summary", "case_fact")

RejectReason = Literal[
    "memory_disabled",
    "class_not_allowed",
    "never_store:card_number",
    "never_store:password",
    "never_store:one_time_code",
    "never_store:mfa_secret",
    "never_store:secret",
    "never_store:contact_detail",
]
"""Why a proposal was rejected (several may apply; all are reported)."""

_SLUG = r"^[a-z][a-z0-9_.:-]{0,63}$"

Scalar = str | int | float | bool | None


class MemoryPolicy(StrictModel):
    """The pack's ``[memory]``: the classes a tenant keeps and each one's retention in days.

    ``retention_days`` maps class → days (1 to 3650); a class absent from it is not kept.
    """

    retention_days: dict[MemoryClass, int] = Field(default_factory=dict)
    """Allowed classes and how long an item of each lives (then it is neither read nor kept)."""

    @field_validator("retention_days")
    @classmethod
    def _sane_days(cls, value: dict[str, int]) -> dict[str, int]:
        for name, days in value.items():
            if isinstance(days, bool) or not 1 <= days <= 3650:
                raise ValueError(f"retention_days.{name}: {days!r} is not a number of days between 1 and 3650")
        return value

    def allows(self, data_class: str) -> bool:
        """Whether items of ``data_class`` may be kept."""
        return data_class in self.retention_days

    def retention(self, data_class: str) -> timedelta:
        """How long an item of an allowed class lives."""
        return timedelta(days=self.retention_days[data_class])  # type: ignore[index]


class MemoryProposal(StrictModel):
    """One memory write the agent proposes; nothing is stored unless :func:`judge` accepts it."""

    data_class: str = Field(min_length=1, max_length=64, pattern=_SLUG)
    """A data class; only the pack's allowed :data:`MemoryClass` values can be accepted."""
    slot: str = Field(min_length=1, max_length=64, pattern=_SLUG)
    """What the item is about within its class (``channel``, ``summary``, ``language``); with
    the class and the run's thread it keys the item, so writing it again replaces it."""
    value: dict[str, Scalar | list[Scalar]] = Field(min_length=1, max_length=32)
    """The content: a small flat record (no free-form nesting to hide things in)."""

    @field_validator("value")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > 4000:
            raise ValueError("a memory item holds at most 4000 characters of JSON")
        return value


class MemoryVerdict(StrictModel):
    """The rule's decision on one proposal."""

    accepted: bool
    data_class: str
    digest: str
    """SHA-256 of the proposal's canonical JSON: what the audit row records instead of the content."""
    reasons: tuple[str, ...] = ()
    """Empty when accepted; every :data:`RejectReason` that applies otherwise."""
    expires_at: datetime | None = None
    """When an accepted item stops being read (``now`` plus the class's retention)."""


# ---- the never-store screen ---------------------------------------------------------------
# DLP placeholder → reason: the DLP guard's own detectors decide cards, secrets, emails and phones
_DLP_REASONS: dict[str, str] = {
    PLACEHOLDERS["card"]: "never_store:card_number",
    PLACEHOLDERS["secret"]: "never_store:secret",
    PLACEHOLDERS["email"]: "never_store:contact_detail",
    PLACEHOLDERS["phone"]: "never_store:contact_detail",
}
_PASSWORD = re.compile(
    r"(?ix)\b(?:password|passwd|passphrase|passcode|pwd|pin)\b(?:\s+(?:is|was|=|:)|\s*[:=])\s*\S{3,}"
    r"|\b(?:password|passwd|passphrase|passcode)\b\s*[\"'][^\"']{3,}[\"']")
_PASSWORD_KEY = re.compile(r"(?i)(?:^|[_\-.])(?:password|passwd|passphrase|passcode|pwd|pin)$")
_OTP = re.compile(
    r"""(?ix)
    \b(?:otp|one[\s-]?time[\s-]?(?:pass)?(?:code|password|pin)|verification[\s-]?code|security[\s-]?code
       |sms[\s-]?code|2fa[\s-]?code|mfa[\s-]?code|auth(?:entication|enticator)?[\s-]?code|login[\s-]?code)
    \b\D{0,24}\d{4,8}\b
    | \b\d{4,8}\b\s+(?:is\s+)?(?:my|the|your)\s+(?:otp|one[\s-]?time|verification|security|login)\b
    """)
_OTP_KEY = re.compile(r"(?i)(?:^|[_\-.])(?:otp|one_?time_?code|verification_?code|sms_?code)$")
_MFA = re.compile(
    r"""(?ix)
    otpauth://
    | \b(?:mfa|2fa|totp|two[\s-]?factor|authenticator)[\s-]*(?:secret|seed|key|recovery[\s-]?codes?|backup[\s-]?codes?)\b
      \W{0,6}[A-Z2-7]{4}
    | \b(?:recovery|backup)[\s-]?codes?\b\W{0,6}[A-Za-z0-9]{4,}
    | (?<![A-Za-z0-9])(?=[A-Z2-7]*\d)[A-Z2-7]{16,64}={0,6}(?![A-Za-z0-9])
    """)
_MFA_KEY = re.compile(r"(?i)(?:^|[_\-.])(?:mfa|totp|2fa|otp)_?(?:secret|seed|key)$|(?:^|[_\-.])recovery_?codes?$")


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(key, text)`` of every string (and every key) inside a proposal's value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k), str(k)
            yield from _strings(v, str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v, path)
    elif value is not None and not isinstance(value, bool):
        yield path, str(value)


def never_store_findings(value: Any) -> tuple[str, ...]:
    """The never-store reasons ``value`` triggers (sorted, empty when clean)."""
    found: set[str] = set()
    for key, text in _strings(value):
        redacted = redact_text(text)
        for placeholder, reason in _DLP_REASONS.items():
            if redacted.count(placeholder) > text.count(placeholder):
                found.add(reason)
        if _PASSWORD.search(text) or _PASSWORD_KEY.search(key):
            found.add("never_store:password")
        if _OTP.search(text) or _OTP_KEY.search(key):
            found.add("never_store:one_time_code")
        if _MFA.search(text) or _MFA_KEY.search(key):
            found.add("never_store:mfa_secret")
    for k in (value if isinstance(value, dict) else ()):
        if redact({k: "x" * 8}) == {k: PLACEHOLDERS["secret"]}:
            found.add("never_store:secret")  # a secret-looking key (``api_key``, ``cvv``): the DLP guard's rule
    return tuple(sorted(found))


def proposal_digest(proposal: MemoryProposal) -> str:
    """SHA-256 of the proposal's canonical JSON (stable across processes)."""
    body = json.dumps(proposal.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def judge(proposal: MemoryProposal, policy: MemoryPolicy | None, now: datetime) -> MemoryVerdict:
    """Accept or reject one proposal: the class must be allowed and the content clean."""
    reasons: list[str] = []
    if policy is None:
        reasons.append("memory_disabled")
    elif not policy.allows(proposal.data_class):
        reasons.append("class_not_allowed")
    reasons += never_store_findings(proposal.value)
    digest = proposal_digest(proposal)
    if reasons:
        return MemoryVerdict(accepted=False, data_class=proposal.data_class, digest=digest, reasons=tuple(reasons))
    assert policy is not None
    return MemoryVerdict(accepted=True, data_class=proposal.data_class, digest=digest,
                         expires_at=now + policy.retention(proposal.data_class))
