"""The ``supply-v1`` policy pack's schema: the supply-chain workflow's numbers as data.

Same contract as :mod:`guards.pack` for support: the file
(``guards/policies/supply-v1.toml``, prose in ``workflows/supply/POLICY.md``) is validated
on load, unknown keys and inconsistent tiers are refused with the file and field named,
and its SHA-256 is kept with every decision. The ``[approvals]`` section reuses support's
:class:`~guards.pack.ApprovalPolicy` (one home for the approval rules) plus the per-tool
list of fields a reviewer may lower. The rule logic is :mod:`guards.supply_policy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, model_validator

from guards.pack import ApprovalPolicy, BudgetPolicy, PolicyError, PolicyPack, RouterPolicy
from keel.types import StrictModel

__all__ = ["SupplyRoute", "SUPPLY_ROUTES", "SUPPLY_TOOLS", "SUPPLY_SIDE_EFFECT_TOOLS", "SupplyPack",
           "SupplyApprovals", "DEFAULT_SUPPLY_POLICY_PATH", "load_supply_policy"]

SupplyRoute = Literal["delay", "stock", "claims", "unknown"]
"""Which desk handles an exception event; ``unknown``: nobody, the run escalates."""
SUPPLY_ROUTES: tuple[SupplyRoute, ...] = ("delay", "stock", "claims", "unknown")
SUPPLY_SIDE_EFFECT_TOOLS: frozenset[str] = frozenset(
    {"reroute_shipment", "substitute_supplier", "notify_customer", "open_carrier_claim"})
"""The supply tools that change a system (each call carries an idempotency key)."""
SUPPLY_READ_TOOLS: frozenset[str] = frozenset({"get_shipment", "get_purchase_order", "get_inventory", "list_suppliers"})
SUPPLY_TOOLS: frozenset[str] = SUPPLY_SIDE_EFFECT_TOOLS | SUPPLY_READ_TOOLS
DEFAULT_SUPPLY_POLICY_PATH = Path(__file__).with_name("policies") / "supply-v1.toml"
"""The shipped pack."""

Template = Literal["delay_notice", "substitution_notice", "loss_notice"]


class _Tools(StrictModel):
    tools: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known(self) -> _Tools:
        unknown = sorted(set(self.tools) - SUPPLY_TOOLS)
        if unknown:
            raise ValueError(f"unknown tools {unknown}")
        return self


class ReadPolicy(_Tools):
    decision: Literal["execute"]


class ReroutePolicy(StrictModel):
    allowed_statuses: list[str] = Field(min_length=1)
    delivered_statuses: list[str]
    auto_max_cents: int = Field(ge=0)
    approve_max_cents: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ReroutePolicy:
        if self.auto_max_cents > self.approve_max_cents:
            raise ValueError("auto_max_cents must not exceed approve_max_cents")
        return self


class SubstitutePolicy(StrictModel):
    price_tolerance_bps: int = Field(ge=0, le=100_000)
    auto_total_max_cents: int = Field(ge=0)


class NotifyPolicy(StrictModel):
    min_interval_hours: int = Field(ge=0)
    count_pending: StrictBool
    templates: dict[Template, SupplyRoute]


class ClaimPolicy(StrictModel):
    eligible_statuses: list[str]
    min_delay_days: int = Field(ge=0)
    blocking_claim_statuses: list[str]
    count_pending: StrictBool
    auto_max_cents: int = Field(ge=0)


class SupplyApprovals(ApprovalPolicy):
    """Support's approval rules plus which fields a reviewer may lower, per tool."""

    editable: dict[str, list[str]]


class SupplyPack(StrictModel):
    """A validated ``supply-v1``-shaped pack; ``sha256`` is the digest of its file."""

    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    router: RouterPolicy
    routes: dict[SupplyRoute, _Tools]
    reads: ReadPolicy
    reroute_shipment: ReroutePolicy
    substitute_supplier: SubstitutePolicy
    notify_customer: NotifyPolicy
    open_carrier_claim: ClaimPolicy
    budgets: BudgetPolicy
    approvals: SupplyApprovals
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")

    @model_validator(mode="after")
    def _routes(self) -> SupplyPack:
        missing = [r for r in SUPPLY_ROUTES if r not in self.routes]
        if missing:
            raise ValueError(f"routes missing {missing}")
        if self.routes["unknown"].tools:
            raise ValueError("routes.unknown must allow no tools (unknown events escalate)")
        unknown = sorted(set(self.approvals.editable) - SUPPLY_SIDE_EFFECT_TOOLS)
        if unknown:
            raise ValueError(f"approvals.editable names unknown tools {unknown}")
        return self

    def allowlist(self, route: str) -> frozenset[str]:
        """The tools route ``route`` may use (none for an unknown route)."""
        spec = self.routes.get(route)  # type: ignore[call-overload]
        return frozenset(spec.tools) if spec is not None else frozenset()

    # the same parsing and error reporting as support's pack (PolicyPack.from_toml is written
    # over ``cls``): unknown keys, wrong types and a preset sha256 are refused, file named
    from_toml = classmethod(PolicyPack.from_toml.__func__)  # type: ignore[attr-defined]


def load_supply_policy(path: str | Path = DEFAULT_SUPPLY_POLICY_PATH) -> SupplyPack:
    """Load and validate a supply pack file; raises :class:`~guards.pack.PolicyError` naming it."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PolicyError(f"{p}: cannot read policy file: {e.strerror or e}") from None
    return SupplyPack.from_toml(raw, source=str(p))  # type: ignore[no-any-return]
