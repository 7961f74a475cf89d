"""Per-environment policy: what ``KEEL_ENV`` (dev, staging, prod) changes of a policy pack.

Why in the pack and not in code: the same pack file is deployed to every environment, and
a reviewer reading it sees exactly what staging may do that prod may not. A pack's
``[env.<name>]`` section may

- ``dry_run_side_effects``: side-effecting tools do not write; the tool runner returns the
  tool's preview marked ``dry_run`` (default: true in ``staging``, false elsewhere);
- ``deny_tools``: tools removed from every route's allowlist in that environment;
- ``routes.<route>.tools``: a route's allowlist replaced;
- ``overrides``: other sections of the pack, merged key by key over the file's
  (``[env.prod.overrides.refund] auto_max_cents = 2500``); the result is validated like the
  pack itself, so an override cannot produce a pack the loader would refuse.

Example::

    [env.staging]
    dry_run_side_effects = true

    [env.prod]
    deny_tools = ["reset_mfa"]
    [env.prod.overrides.refund]
    auto_max_cents = 2500
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, field_validator

from keel.types import Route, StrictModel

__all__ = ["Environment", "ENVIRONMENTS", "EnvPolicy", "apply_env", "default_dry_run"]

Environment = Literal["dev", "staging", "prod"]
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "staging", "prod")

_FIXED = frozenset({"version", "sha256", "env", "routes"})
"""Sections an override may not touch (identity of the pack, the environments themselves;
allowlists go through ``routes``/``deny_tools``, which name their tools)."""


class EnvRoute(StrictModel):
    """A route's allowlist in one environment."""

    tools: list[str] = Field(default_factory=list)


class EnvPolicy(StrictModel):
    """What one environment changes of the pack (see the module docstring)."""

    dry_run_side_effects: bool | None = None
    """Side-effecting tools return their preview instead of writing; None: the default
    (:func:`default_dry_run`)."""
    deny_tools: list[str] = Field(default_factory=list)
    """Tools removed from every route's allowlist."""
    routes: dict[Route, EnvRoute] = Field(default_factory=dict)
    """Routes whose allowlist this environment replaces."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Other pack sections, merged key by key over the file's."""

    @field_validator("overrides")
    @classmethod
    def _not_fixed(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if k in _FIXED)
        if bad:
            raise ValueError(f"may not override {bad}")
        return v

    def tool_names(self) -> list[str]:
        """Every tool this section names (the loader refuses unknown ones)."""
        return [*self.deny_tools, *(t for r in self.routes.values() for t in r.tools)]


def default_dry_run(env: str) -> bool:
    """Whether side effects dry-run in ``env`` when its section does not say: only in staging."""
    return env == "staging"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_env(pack: dict[str, Any], env: EnvPolicy) -> dict[str, Any]:
    """A pack's data (``model_dump``) with one environment's changes applied (not validated)."""
    data = _merge(pack, env.overrides)
    routes = {r: dict(spec) for r, spec in data["routes"].items()}
    for route, spec in env.routes.items():
        routes[route] = {**routes.get(route, {}), "tools": list(spec.tools)}
    denied = set(env.deny_tools)
    for spec in routes.values():
        spec["tools"] = [t for t in spec.get("tools", []) if t not in denied]
    data["routes"] = routes
    return data
