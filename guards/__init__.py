"""Deterministic guards around the support agent: policy, DLP, injection screen, budgets.

A model only proposes; everything here decides, with no model and no I/O beyond the
policy file and the token-budget table. Submodules:

- :mod:`guards.policy`: the policy pack (TOML data) and the engine that decides actions.
- :mod:`guards.dlp`: redaction of personal data and secrets in logs and traces.
- :mod:`guards.injection`: prompt-injection screening of ticket and retrieved text.
- :mod:`guards.budgets`: per-run caps and the per-tenant daily token budget.
"""

from guards.budgets import RunCaps, TenantTokenBudget, charge_tool_call, check, new_budget
from guards.dlp import RedactingFilter, install_redaction, redact
from guards.injection import ScreenResult, screen
from guards.policy import (
    PlanDecision,
    PolicyEngine,
    PolicyError,
    PolicyFacts,
    PolicyPack,
    apply_edit,
    check_edit,
    check_reviewer,
    load_policy,
)

__all__ = [
    "PolicyPack",
    "PolicyError",
    "PolicyFacts",
    "PolicyEngine",
    "PlanDecision",
    "load_policy",
    "check_reviewer",
    "check_edit",
    "apply_edit",
    "redact",
    "RedactingFilter",
    "install_redaction",
    "screen",
    "ScreenResult",
    "RunCaps",
    "new_budget",
    "charge_tool_call",
    "check",
    "TenantTokenBudget",
]
