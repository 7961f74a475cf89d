"""What every tool shares: its call's environment, its errors, common argument types.

Why typed contracts: a plan's arguments are validated against the tool's input model
before the plan is signed and again before the call, and a tool's output is validated
before the model or a reviewer sees it. Every model rejects unknown fields. Each tool's
own models live with its implementation and declaration in ``tools/catalog`` (see
:mod:`tools.declaration`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from keel.db import Tx
from keel.errors import KeelError
from keel.types import StrictModel

__all__ = [
    "ToolError",
    "TransientToolError",
    "ToolEnv",
    "ToolInput",
    "RecordId",
    "EmailAddress",
    "derived_id",
]


class ToolError(KeelError):
    """A tool refused the call; ``code`` is machine-readable, ``message`` short and safe to show.

    Not retryable: a refusal is recorded (in the ledger, for a side effect) and returned. A
    subclass with ``retryable = True`` is a failure instead, retried by the runner.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientToolError(ToolError):
    """A failure worth retrying (a busy database, a flaky downstream); the runner backs off."""

    retryable = True

    def __init__(self, message: str = "temporarily unavailable", code: str = "transient_failure") -> None:
        super().__init__(code, message)


@dataclass(frozen=True)
class ToolEnv:
    """What a tool knows about its call besides its arguments (built by the runner)."""

    tenant: str
    """Tenant whose records the call may see."""
    customer_id: str
    """The ticket's customer: the only owner whose records the call may touch."""
    now: datetime
    """The run's clock, stamped on the records a tool writes."""
    idempotency_key: str | None = None
    """The call's idempotency key; new record ids are derived from it."""
    guard: Callable[[Tx], None] | None = None
    """The caller's last check, which the runner makes in the call's transaction before
    the tool acts (:attr:`tools.runner.ToolContext.guard`)."""


# --------------------------------------------------------------------------- types

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


def _valid_email(value: str) -> str:
    # pydantic's EmailStr needs the email-validator package, which keel does not ship.
    if len(value) > 254 or parseaddr(value)[1] != value or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


EmailAddress = Annotated[str, AfterValidator(_valid_email)]
"""A bare ``local@domain.tld`` address (no display name)."""

RecordId = Annotated[str, Field(min_length=1, max_length=64)]
"""Id of a back-office record."""


class ToolInput(StrictModel):
    """Base of every tool input: strict JSON types (no ``"12"`` for 12), unknown fields rejected."""

    model_config = ConfigDict(strict=True)


def derived_id(prefix: str, tenant: str, idempotency_key: str) -> str:
    """The id of the record a keyed call creates: the same on every replay of the key, so
    a run can also recognise its own records (``tools.refund_history``)."""
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"
