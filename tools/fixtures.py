"""The batch contract's input files: back-office fixtures (JSON) and tickets (JSON Lines).

Why a line-aware parser: the batch command must report a malformed fixture record or
ticket line with its line number and go on with the rest. JSON syntax errors are fatal
for a fixtures file (nothing can be trusted after one); a record that is valid JSON but
breaks the contract (bad type, unknown field, dangling customer_id, duplicate id) is
reported at the line where the record starts and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from keel.config import PACKAGE_DIR
from keel.types import StrictModel, Ticket

__all__ = [
    "OrderStatus",
    "Id",
    "Account",
    "Customer",
    "Order",
    "Subscription",
    "Article",
    "SynonymGroup",
    "Fixtures",
    "LineError",
    "FixtureParse",
    "parse_fixtures_text",
    "parse_fixtures_file",
    "parse_tickets_lines",
    "demo_fixtures",
    "format_validation_error",
]

OrderStatus = Literal["placed", "paid", "shipped", "delivered"]
"""Order statuses a fixtures file may contain (tools may later set ``cancelled``)."""

Id = Annotated[str, Field(min_length=1, max_length=64)]
"""A record id: a short non-empty string."""


class _Record(StrictModel):
    """Fixture records: strict types (no ``"12"`` for 12), unknown fields rejected."""

    model_config = ConfigDict(strict=True)


class Account(_Record):
    """Login state of a customer's account, what the access tools change."""

    locked: bool
    """Locked after too many attempts; ``unlock_account`` clears it."""
    mfa_enabled: bool
    """Whether multi-factor authentication is on; ``reset_mfa`` clears it."""


class Customer(_Record):
    """A customer of the tenant; every action must name records the customer owns."""

    id: Id
    """Customer id (``C-…``)."""
    name: str = Field(min_length=1, max_length=200)
    """Display name."""
    email: str = Field(min_length=3, max_length=254)
    """Email on file: where password resets go, and nowhere else."""
    identity_level: int = Field(ge=0, le=3)
    """How well the customer's identity is verified (policy thresholds 1 and 2)."""
    account: Account
    """Login state."""


class Order(_Record):
    """An order: what refunds, cancels, address changes and reships act on."""

    id: Id
    """Order id (``O-…``)."""
    customer_id: Id
    """Owner; must be a customer of the same fixtures."""
    status: OrderStatus
    """Fulfilment status; decides what may still be changed."""
    total_cents: int = Field(ge=0)
    """Order total in integer cents."""
    refunded_cents: int = Field(ge=0)
    """Already refunded; at most ``total_cents``."""
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    """ISO 4217 code."""
    placed_at: AwareDatetime
    """When the order was placed."""
    delivered_at: AwareDatetime | None
    """When it was delivered (null until then); starts the refund window."""
    carrier_status: str = Field(max_length=500)
    """The carrier's latest status text, quoted by tracking answers."""
    shipping_address: str = Field(min_length=1, max_length=500)
    """Where the order ships."""

    @model_validator(mode="after")
    def _refund_not_above_total(self) -> Order:
        if self.refunded_cents > self.total_cents:
            raise ValueError("refunded_cents exceeds total_cents")
        return self


class Subscription(_Record):
    """A recurring plan a customer can cancel at period end or immediately."""

    id: Id
    """Subscription id (``S-…``)."""
    customer_id: Id
    """Owner; must be a customer of the same fixtures."""
    plan: str = Field(min_length=1, max_length=64)
    """Plan name (basic, pro, team, …)."""
    status: str = Field(min_length=1, max_length=32)
    """``active`` in fixtures; tools set ``cancelled`` or ``cancels_at_period_end``."""
    period_end: AwareDatetime
    """End of the current billing period."""


class Article(_Record):
    """A knowledge-base article that knowledge answers cite by id."""

    id: Id
    """Article id (``KB-…``), the citation."""
    title: str = Field(min_length=1, max_length=300)
    """Title (weighs in search like body text)."""
    body: str = Field(min_length=1, max_length=50_000)
    """Article text."""


SynonymGroup = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(min_length=2, max_length=50)]
"""Words or phrases that mean the same to a tenant's customers (``["refund", "money back"]``)."""

_SYNONYMS: TypeAdapter[list[SynonymGroup]] = TypeAdapter(list[SynonymGroup], config=ConfigDict(strict=True))


class Fixtures(StrictModel):
    """One tenant's sandbox back office, as loaded by :class:`tools.backoffice.BackOffice`."""

    tenant: str = Field(min_length=1, max_length=64)
    """Tenant the records belong to."""
    customers: list[Customer] = Field(default_factory=list)
    """Customers."""
    orders: list[Order] = Field(default_factory=list)
    """Orders, each owned by one of ``customers``."""
    subscriptions: list[Subscription] = Field(default_factory=list)
    """Subscriptions, each owned by one of ``customers``."""
    articles: list[Article] = Field(default_factory=list)
    """Knowledge-base articles."""
    synonyms: list[SynonymGroup] = Field(default_factory=list, max_length=2_000)
    """Optional: the tenant's synonym groups for knowledge search (:mod:`tools.search`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Fixtures:
        for kind in _COLLECTIONS:
            ids = [r.id for r in getattr(self, kind)]
            if len(ids) != len(set(ids)):
                raise ValueError(f"duplicate id in {kind}")
        customers = {c.id for c in self.customers}
        for kind in ("orders", "subscriptions"):
            if any(r.customer_id not in customers for r in getattr(self, kind)):
                raise ValueError(f"{kind} reference an unknown customer_id")
        return self


_COLLECTIONS: dict[str, type[_Record]] = {
    "customers": Customer,
    "orders": Order,
    "subscriptions": Subscription,
    "articles": Article,
}


class LineError(StrictModel):
    """A malformed record or line: where it starts and what is wrong (no values, no trace)."""

    line: int = Field(ge=1)
    """1-based line number where the bad record or line starts."""
    message: str
    """Short, human-readable reason, e.g. ``field 'body' is required``."""

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class FixtureParse(StrictModel):
    """Result of parsing a fixtures file: the valid part, and every problem found."""

    fixtures: Fixtures | None
    """The valid records; None when the file is unusable (syntax error, no tenant)."""
    errors: list[LineError] = Field(default_factory=list)
    """Problems in file order; non-empty means the batch exits non-zero."""


def format_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """A short message naming the fields at fault, never echoing their values."""
    parts: list[str] = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        field = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "missing":
            parts.append(f"field '{field}' is required")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field '{field}'")
        elif field:
            parts.append(f"field '{field}': {err['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(err["msg"].removeprefix("Value error, "))
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _members(text: str) -> Iterator[tuple[str, int, int]]:
    """(key, value start, value end) of the top-level object of a syntactically valid text."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # past "{"
    while True:
        pos = _skip_ws(text, pos)
        if text[pos] == "}":
            return
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # past ":"
        _, end = decoder.raw_decode(text, pos)
        yield key, pos, end
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos += 1


def _elements(text: str, start: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each element of the JSON array beginning at ``start``."""
    decoder = json.JSONDecoder()
    pos = start + 1
    while True:
        pos = _skip_ws(text, pos)
        if text[pos] == "]":
            return
        _, end = decoder.raw_decode(text, pos)
        yield pos, end
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos += 1


def parse_fixtures_text(text: str) -> FixtureParse:
    """Parse a fixtures file, keeping every valid record and reporting the others by line."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return FixtureParse(fixtures=None, errors=[LineError(line=e.lineno, message=f"invalid JSON: {e.msg}")])
    if not isinstance(doc, dict):
        return FixtureParse(fixtures=None, errors=[LineError(line=1, message="expected a JSON object")])

    errors: list[LineError] = []
    tenant: str | None = None
    raw: dict[str, list[tuple[int, str]]] = {kind: [] for kind in _COLLECTIONS}
    synonyms: list[list[str]] = []
    for key, start, end in _members(text):
        line = _line_of(text, start)
        if key == "tenant":
            value = doc.get("tenant")
            if isinstance(value, str) and 1 <= len(value) <= 64:
                tenant = value
            else:
                errors.append(LineError(line=line, message="field 'tenant' must be a non-empty string"))
        elif key in _COLLECTIONS:
            if text[start] != "[":
                errors.append(LineError(line=line, message=f"field '{key}' must be a list"))
                continue
            raw[key] = [(_line_of(text, s), text[s:e]) for s, e in _elements(text, start)]
        elif key == "synonyms":
            try:
                synonyms = _SYNONYMS.validate_json(text[start:end])
            except ValidationError as e:
                errors.append(LineError(line=line, message=f"synonyms: {format_validation_error(e)}"))
        else:
            errors.append(LineError(line=line, message=f"unknown field '{key}'"))
    if tenant is None:
        if "tenant" not in doc:
            errors.insert(0, LineError(line=1, message="field 'tenant' is required"))
        return FixtureParse(fixtures=None, errors=sorted(errors, key=lambda e: e.line))

    kept: dict[str, list[Any]] = {kind: [] for kind in _COLLECTIONS}
    for kind, model in _COLLECTIONS.items():  # customers first: orders refer to them
        seen: set[str] = set()
        customers = {c.id for c in kept["customers"]}
        for line, snippet in raw[kind]:
            try:
                record = model.model_validate_json(snippet)
            except ValidationError as e:
                errors.append(LineError(line=line, message=f"{kind[:-1]}: {format_validation_error(e)}"))
                continue
            if record.id in seen:
                errors.append(LineError(line=line, message=f"{kind[:-1]}: duplicate id '{record.id}'"))
                continue
            if kind in ("orders", "subscriptions") and record.customer_id not in customers:
                errors.append(LineError(line=line, message=f"{kind[:-1]}: unknown customer_id '{record.customer_id}'"))
                continue
            seen.add(record.id)
            kept[kind].append(record)
    fixtures = Fixtures(tenant=tenant, synonyms=synonyms, **kept)
    return FixtureParse(fixtures=fixtures, errors=sorted(errors, key=lambda e: e.line))


def parse_fixtures_file(path: str | Path) -> FixtureParse:
    """:func:`parse_fixtures_text` on a file (UTF-8)."""
    return parse_fixtures_text(Path(path).read_text(encoding="utf-8"))


def demo_fixtures() -> Fixtures:
    """The bundled demo back office (``keel/demo/fixtures.json``), which must be valid."""
    parsed = parse_fixtures_file(PACKAGE_DIR / "demo" / "fixtures.json")
    if parsed.fixtures is None or parsed.errors:
        raise ValueError("bundled demo fixtures are invalid: " + "; ".join(map(str, parsed.errors)))
    return parsed.fixtures


def parse_tickets_lines(lines: Iterable[str]) -> Iterator[tuple[int, Ticket | LineError]]:
    """Each non-blank JSON Lines ticket as ``(line_no, Ticket)`` or ``(line_no, LineError)``."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_no, LineError(line=line_no, message=f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield line_no, LineError(line=line_no, message="expected a JSON object")
            continue
        try:
            yield line_no, Ticket.model_validate(obj)
        except ValidationError as e:
            yield line_no, LineError(line=line_no, message=format_validation_error(e))
