"""The supply workflow on a runtime: its store, pack, tool runner and run context.

Built from the runtime's own database, audit log, run index, directory and clock, so a
supply run gets keel's checkpoints, queue, leases, tenants, audit chain and approvals API
like support's; only its records, pack and tools are its own. Cached per runtime.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphs.supply_state import SupplyContext
from engine.tracing import TracedJudge
from guards.budgets import RunCaps
from guards.supply_pack import DEFAULT_SUPPLY_POLICY_PATH, SupplyPack, load_supply_policy
from guards.supply_policy import SupplyPolicyEngine
from tools.runner import ToolRunner
from tools.supply import SUPPLY_TOOLS, SupplyFixtures, SupplyStore, parse_supply_fixtures

__all__ = ["SupplyParts", "supply_parts", "supply_context", "load_supply_fixtures",
           "SUPPLY_DEMO_FIXTURES"]

SUPPLY_DEMO_FIXTURES = Path(__file__).resolve().parent.parent / "workflows" / "supply" / "fixtures.json"
"""The supply back office the Studio entry point loads when its tenant has none."""


@dataclass(frozen=True)
class SupplyParts:
    """The supply workflow's own parts on one runtime."""

    store: SupplyStore
    pack: SupplyPack
    engine: SupplyPolicyEngine
    tools: ToolRunner


_PARTS: weakref.WeakKeyDictionary[Any, SupplyParts] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def supply_parts(rt: Any, pack_path: Path = DEFAULT_SUPPLY_POLICY_PATH) -> SupplyParts:
    """The runtime's supply parts (built once: the store's table created, the pack validated)."""
    with _LOCK:
        parts = _PARTS.get(rt)
        if parts is None:
            store = SupplyStore(rt.db)
            with rt.setup_lock():
                store.setup()
            pack = load_supply_policy(pack_path)
            runner = ToolRunner(store, timeout_s=rt.settings.tool_timeout_s,  # type: ignore[arg-type]
                                rate_per_minute=rt.settings.tool_rate_per_minute,
                                max_retries=pack.budgets.max_retries, registry=SUPPLY_TOOLS,
                                # KEEL_ENV: the deployment's pack decides for every workflow (staging: dry run)
                                dry_run_side_effects=rt.policy.dry_run_side_effects(rt.settings.env))
            parts = _PARTS[rt] = SupplyParts(store=store, pack=pack, engine=SupplyPolicyEngine(pack), tools=runner)
        return parts


def supply_context(rt: Any) -> SupplyContext:
    """What the supply graph's nodes may use, for one run, from the runtime's parts."""
    p = supply_parts(rt)
    return SupplyContext(policy=p.pack, policy_engine=TracedJudge(p.engine), caps=RunCaps.from_pack(p.pack), tools=p.tools,
                         records=p.store, audit=rt.audit, run_index=rt.threads, role_of=rt.role_of, clock=rt.now,
                         signing_key=rt.keyring)


def load_supply_fixtures(rt: Any, fixtures: SupplyFixtures | str | Path) -> SupplyFixtures:
    """Load a supply back office (a parsed one, JSON text or a file) into the runtime's store."""
    if isinstance(fixtures, Path):
        fixtures = fixtures.read_text(encoding="utf-8")
    fx = parse_supply_fixtures(fixtures) if isinstance(fixtures, str) else fixtures
    supply_parts(rt).store.load_fixtures(fx)
    return fx
