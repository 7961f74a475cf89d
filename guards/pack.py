"""The policy pack: the support policy's numbers as data, and their schema.

The rules' numbers (thresholds, windows, identity levels, allowlists, who approves) live in
a TOML file an operator can edit without a deploy (``guards/policies/support-v1.toml``);
this module validates it on load, so a pack with a typo, a missing section or an
inconsistent tier is refused with the file and field named, never half applied. The rule
*logic* that applies these numbers is :mod:`guards.policy`.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator

from guards.env_policy import EnvPolicy, Environment, apply_env, default_dry_run
from guards.memory_policy import MemoryPolicy
from keel.errors import ConfigError
from keel.types import ROUTES, Route, StrictModel

__all__ = [
    "ReasonCode",
    "OrderStatus",
    "ReviewerRole",
    "DEFAULT_POLICY_PATH",
    "PolicyError",
    "RouterPolicy",
    "RoutePolicy",
    "RefundPolicy",
    "RefundVelocityPolicy",
    "WindowPolicy",
    "StatusPolicy",
    "FixedDecisionPolicy",
    "ToolRule",
    "SubscriptionCancelPolicy",
    "AccessRule",
    "AccessPolicy",
    "BudgetPolicy",
    "ApprovalPolicy",
    "PolicyPack",
    "load_policy",
]

ReasonCode = Literal[
    "tool_not_allowed",
    "invalid_args",
    "not_owner",
    "not_found",
    "outside_refund_window",
    "amount_exceeds_refundable",
    "amount_over_agent_limit",
    "velocity_limit",
    "not_cancellable",
    "already_shipped",
    "identity_not_verified",
    "suspected_prompt_injection",
    "budget_exceeded",
    "not_approver",
    "wrong_tenant",
    "separation_of_duties",
    "edit_not_allowed",
    "edit_raises_amount",
    "no_policy_rule",
]
"""Every reason code this module emits.

- ``tool_not_allowed``: unknown tool, or not in the route's allowlist.
- ``invalid_args``: an argument the rule needs is missing or malformed.
- ``not_owner`` / ``not_found``: ownership rule (record of someone else / no such record).
- ``outside_refund_window``: not delivered, or delivered longer ago than the window.
- ``amount_exceeds_refundable``: more than total − already refunded.
- ``amount_over_agent_limit``: refund above the approval ceiling (escalate).
- ``velocity_limit``: with the customer's other recent refunds by keel (executed, pending
  approval, or earlier in the plan) the refund crosses a tier it does not cross alone, or
  the customer's count of refunds in the period: approve or escalate instead.
- ``not_cancellable`` / ``already_shipped``: order status forbids cancel / address change.
- ``identity_not_verified``: customer identity level below the access rule's minimum.
- ``suspected_prompt_injection``: flagged ticket asks for a side effect.
- ``budget_exceeded``: plan larger than the per-run tool-call budget.
- ``not_approver`` / ``wrong_tenant`` / ``separation_of_duties``: reviewer checks.
- ``edit_not_allowed`` / ``edit_raises_amount``: reviewer edit checks.
- ``no_policy_rule``: a side-effecting tool the pack states no rule for (denied, never run).
"""

OrderStatus = Literal["placed", "paid", "shipped", "delivered"]
"""An order's lifecycle status in the back office."""

ReviewerRole = Literal["requester", "approver", "admin"]
"""Roles of keel's API keys (an approver role list in the pack names who may review)."""

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent / "policies" / "support-v1.toml"
"""The bundled ``support-v1`` pack."""

_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
"""What a tool name looks like; whether the tool exists is checked against the declared tools
(:meth:`PolicyPack.check_tools`), which this module cannot import."""
_Fixed = Literal["execute", "approve", "escalate", "deny"]


class PolicyError(ConfigError, ValueError):
    """A policy file that cannot be used; the message names the file and the problem."""

    code = "invalid_policy"




class RouterPolicy(StrictModel):
    """How sure the router must be before a specialist takes the ticket."""

    min_confidence: float = Field(ge=0.0, le=1.0)


class RoutePolicy(StrictModel):
    """One route's tool allowlist."""

    tools: list[str] = Field(default_factory=list)

    @field_validator("tools")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = sorted(t for t in v if not _TOOL_NAME.match(t))
        if bad:
            raise ValueError(f"not tool names {bad}")
        return v


class RefundVelocityPolicy(StrictModel):
    """``[refund.velocity]``: the amount tiers over a customer's recent refunds, not one ticket's.

    Why: the tiers judge one refund, so a customer who splits a refund over several
    tickets (4,500 then 4,499 on one order) stays under every tier. The engine adds keel's
    own refunds of the customer to the refund's amount before applying the tiers: those
    executed within the period (by their timestamp on the run clock), those in plans
    waiting for approval when ``count_pending`` (whatever their age: they may still
    execute), and the plan's earlier refunds. A fixture's ``refunded_cents`` has no date
    and is not counted here: it only lowers what is still refundable.
    """

    period_days: int | None = Field(default=None, ge=1)
    """The period in days (set this or ``period_hours``, not both)."""
    period_hours: int | None = Field(default=None, ge=1)
    """The period in hours."""
    max_auto_cents: int = Field(ge=0)
    """The customer's refunds in the period, this one included, above this: approve."""
    max_approve_cents: int = Field(ge=0)
    """... above this: escalate."""
    max_auto_count: int = Field(ge=0)
    """A refund executes without approval only while the customer's refunds in the period,
    this one included, number at most this many (0: every refund needs approval)."""
    count_pending: bool = Field(strict=True)
    """Refunds in plans waiting for approval count as if executed."""

    @model_validator(mode="after")
    def _consistent(self) -> RefundVelocityPolicy:
        if (self.period_days is None) == (self.period_hours is None):
            raise ValueError("set exactly one of period_days and period_hours")
        if self.max_auto_cents > self.max_approve_cents:
            raise ValueError("max_auto_cents must not exceed max_approve_cents")
        return self

    @property
    def period(self) -> timedelta:
        """How far back executed refunds count."""
        return timedelta(days=self.period_days or 0, hours=self.period_hours or 0)

    def describe_period(self) -> str:
        """The period as the pack says it (``30 days``, ``24 hours``)."""
        return f"{self.period_days} days" if self.period_days else f"{self.period_hours} hours"


class RefundPolicy(StrictModel):
    """Refund tiers (cents), the delivery window (days, inclusive) and the velocity rule."""

    auto_max_cents: int = Field(ge=0)
    approve_max_cents: int = Field(ge=0)
    window_days: int = Field(ge=0)
    velocity: RefundVelocityPolicy
    """Required: a pack states how refunds across tickets add up (no silent default)."""

    @model_validator(mode="after")
    def _ordered(self) -> RefundPolicy:
        if self.auto_max_cents > self.approve_max_cents:
            raise ValueError("auto_max_cents must not exceed approve_max_cents")
        v = self.velocity
        # a per-customer limit below one refund's tier would silently replace that tier
        if v.max_auto_cents < self.auto_max_cents:
            raise ValueError(f"velocity.max_auto_cents ({v.max_auto_cents}) is below auto_max_cents "
                             f"({self.auto_max_cents}): lower auto_max_cents instead")
        if v.max_approve_cents < self.approve_max_cents:
            raise ValueError(f"velocity.max_approve_cents ({v.max_approve_cents}) is below approve_max_cents "
                             f"({self.approve_max_cents}): lower approve_max_cents instead")
        return self


class WindowPolicy(StrictModel):
    """A delivery window in days (inclusive)."""

    window_days: int = Field(ge=0)


class StatusPolicy(StrictModel):
    """Order statuses in which an order-changing action is allowed."""

    allowed_statuses: list[OrderStatus]


class FixedDecisionPolicy(StrictModel):
    """A tool whose decision does not depend on the facts beyond ownership."""

    decision: _Fixed


class ToolRule(StrictModel):
    """``[tools.<name>]``: the rule of a tool that has no rule section of its own.

    The decision applies after the allowlist and ownership rules. A side-effecting tool
    with neither a section of its own nor a ``[tools.<name>]`` rule is denied
    (``no_policy_rule``): a tool is never run because the pack forgot it.
    """

    decision: _Fixed


class SubscriptionCancelPolicy(StrictModel):
    """Decision for a subscription cancel, by when it takes effect."""

    period_end: _Fixed
    immediate: _Fixed


class AccessRule(StrictModel):
    """Identity level an access action needs, and its decision when met."""

    min_identity_level: int = Field(ge=0)
    decision: Literal["execute", "approve"]


class AccessPolicy(StrictModel):
    """One rule per account-access tool (all four are required: no silent default)."""

    send_password_reset: AccessRule
    unlock_account: AccessRule
    reset_mfa: AccessRule
    change_email: AccessRule


class BudgetPolicy(StrictModel):
    """Per-run caps, and the daily quotas (UTC days) of a tenant and of each of its users.

    A user's quota is a share of the tenant's, so one requester key cannot spend the
    tenant's whole day (see :mod:`guards.budgets`); a share larger than the whole is a
    mistake in the pack and is refused.
    """

    max_tool_calls: int = Field(ge=1)
    wall_clock_s: float = Field(gt=0)
    max_retries: int = Field(ge=0)
    tenant_daily_tokens: int = Field(ge=0)
    user_daily_tokens: int = Field(ge=0)
    tenant_daily_runs: int = Field(ge=1)
    user_daily_runs: int = Field(ge=1)
    quota_alert_ratio: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _user_share_within_tenant(self) -> BudgetPolicy:
        for quota in ("tokens", "runs"):
            user, tenant = getattr(self, f"user_daily_{quota}"), getattr(self, f"tenant_daily_{quota}")
            if user > tenant:
                raise ValueError(f"user_daily_{quota} ({user}) must not exceed tenant_daily_{quota} ({tenant})")
        return self


class ApprovalPolicy(StrictModel):
    """The pack's ``[approvals]``: who may decide a paused plan and what a reviewer may change.

    The one source of these rules: the graph's approval node, the HTTP API, the listing of
    pending approvals and the CLI all read them from the pack in force (through
    :mod:`guards.approvals`), so an operator changes who approves by editing the pack, and no
    role list is written anywhere else. Every field is required: no silent default.
    """

    approver_roles: tuple[ReviewerRole, ...] = Field(min_length=1)
    """Roles that may approve or reject (an unknown role name is rejected on load)."""
    separation_of_duties: StrictBool
    """True: the user who started a run may not decide it."""
    edits_only_downward: StrictBool
    """True: a reviewer may only lower amounts; False: amounts may also go up (the edited
    plan is evaluated again either way)."""
    deadline_minutes: int = Field(strict=True, ge=1, le=60 * 24 * 30)
    """How long a plan may wait for a decision (1 minute to 30 days); then ``on_deadline`` applies."""
    assignee_group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    """The team a pending plan is assigned to (shown with each pending approval)."""
    on_deadline: Literal["escalate", "reject"]
    """What keel does with a plan nobody decided in time, as actor ``system``: hand the run to
    a person (``escalate``) or reject it with reason ``deadline_passed``."""

    def role_may_decide(self, role: str) -> bool:
        """Whether a user with ``role`` may approve or reject a plan."""
        return role in self.approver_roles

    def conflict_of_duties(self, requester: str | None, reviewer: str) -> bool:
        """Whether separation of duties forbids ``reviewer`` deciding ``requester``'s run
        (an unnamed reviewer counts as the requester)."""
        return self.separation_of_duties and (not reviewer or reviewer == requester)


class PolicyPack(StrictModel):
    """A validated policy pack. ``sha256`` is the digest of the file it was loaded from."""

    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    router: RouterPolicy
    routes: dict[Route, RoutePolicy]
    refund: RefundPolicy
    reship: WindowPolicy
    cancel_order: StatusPolicy
    update_shipping_address: StatusPolicy
    track_shipment: FixedDecisionPolicy
    cancel_subscription: SubscriptionCancelPolicy
    access: AccessPolicy
    budgets: BudgetPolicy
    approvals: ApprovalPolicy
    memory: MemoryPolicy | None = None
    """Long-term memory per customer: allowed data classes and their retention (``guards.memory_policy``);
    absent: nothing is remembered."""
    tools: dict[str, ToolRule] = Field(default_factory=dict)
    """Rules of tools without a section of their own, by tool name (see :class:`ToolRule`)."""
    env: dict[Environment, EnvPolicy] = Field(default_factory=dict)
    """Per-environment allowlists and overrides (``KEEL_ENV``, see :mod:`guards.env_policy`)."""
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")

    @model_validator(mode="after")
    def _all_routes(self) -> PolicyPack:
        missing = [r for r in ROUTES if r not in self.routes]
        if missing:
            raise ValueError(f"routes missing {missing}")
        if self.routes["unknown"].tools:
            raise ValueError("routes.unknown must allow no tools (unknown tickets escalate)")
        return self

    @model_validator(mode="after")
    def _envs_valid(self) -> PolicyPack:
        for name in self.env:  # each environment's pack must be one the loader accepts
            try:
                self.for_env(name)
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
                raise ValueError(f"env.{name}: {problems}") from None
        return self

    def for_env(self, name: str) -> PolicyPack:
        """The pack as environment ``name`` applies it (its ``[env.<name>]`` allowlists and
        overrides); itself if the pack has no such section."""
        section = self.env.get(name)  # type: ignore[call-overload]
        if section is None:
            return self
        data = apply_env(self.model_dump(mode="json", exclude={"env"}), section)
        return type(self).model_validate(data).model_copy(update={"env": self.env})

    def dry_run_side_effects(self, name: str) -> bool:
        """Whether side-effecting tools dry-run in environment ``name``."""
        section = self.env.get(name)  # type: ignore[call-overload]
        if section is not None and section.dry_run_side_effects is not None:
            return section.dry_run_side_effects
        return default_dry_run(name)

    @classmethod
    def from_toml(cls, text: str | bytes, source: str = "<string>") -> PolicyPack:
        """Parse and validate TOML text; ``sha256`` is computed over the exact bytes."""
        raw = text.encode() if isinstance(text, str) else text
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(f"{source}: not valid TOML: {e}") from None
        if "sha256" in data:
            raise PolicyError(f"{source}: 'sha256' is computed on load and may not be set")
        try:
            return cls.model_validate({**data, "sha256": hashlib.sha256(raw).hexdigest()})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise PolicyError(f"{source}: invalid policy: {problems}") from None

    def allowlist(self, route: Route) -> list[str]:
        """Tools the route may use."""
        return self.routes[route].tools

    def named_tools(self) -> list[tuple[str, str]]:
        """Every tool the pack names, with where: ``(section, tool)``, section ``routes.<route>``
        or ``tools``."""
        named = [(f"routes.{r}", t) for r, rp in self.routes.items() for t in rp.tools]
        named += [(f"env.{e}", t) for e, section in self.env.items() for t in section.tool_names()]
        return named + [("tools", t) for t in self.tools]

    def check_tools(self, known: Collection[str], source: str = "") -> None:
        """Refuse a pack that names a tool nobody declared (a typo would silently allow nothing,
        or a rule would wait for a tool that never comes); raises :class:`PolicyError`."""
        unknown = sorted((where, t) for where, t in self.named_tools() if t not in known)
        if unknown:
            where = ", ".join(f"{w}: {t}" for w, t in unknown)
            raise PolicyError(f"{source or self.version}: invalid policy: unknown tools [{where}]")


def load_policy(path: str | Path = DEFAULT_POLICY_PATH, tools: Collection[str] | None = None) -> PolicyPack:
    """Load and validate a policy pack file; raises :class:`PolicyError` naming the file.

    ``tools``: the declared tools' names (``tools.registry.TOOLS``); when given, a pack naming
    any other tool is refused here (the policy engine refuses it in any case).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PolicyError(f"{p}: cannot read policy file: {e.strerror or e}") from None
    pack = PolicyPack.from_toml(raw, source=str(p))
    if tools is not None:
        pack.check_tools(tools, source=str(p))
    return pack
