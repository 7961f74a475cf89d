"""A keel API with the review console on an embedded store, for the console's tests.

Two tenants (``acme`` and a fresh one) with the demo records, and one key per role in each
(``requester``, ``approver``, ``admin``; ``dual`` is one user holding a requester key and an
approver key, for separation of duties).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone, UTC
from pathlib import Path
from typing import Any

from support.api_helpers import demo_tickets, load_demo, new_tenant

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class ConsoleEnv:
    """The runtime, the app and the keys of two tenants."""

    rt: Any
    app: Any
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    """``keys[tenant][role]``."""
    tenants: tuple[str, str] = ("acme", "")

    def tickets(self, tenant: str) -> dict[str, dict[str, Any]]:
        return demo_tickets(tenant)

    def add_tenant(self, name: str | None = None) -> str:
        """A tenant with fresh demo records (a refund approved in one test cannot change what
        the next one sees) and its keys; returns its name."""
        tenant = name or new_tenant()
        if name is None:
            load_demo(self.rt, tenant)
        keys = {role: self.rt.principals.create_key(tenant, f"{role}-{tenant}", role)
                for role in ("requester", "approver", "admin")}
        keys["dual-requester"] = self.rt.principals.create_key(tenant, f"dual-{tenant}", "requester")
        keys["dual-approver"] = self.rt.principals.create_key(tenant, f"dual-{tenant}", "approver")
        self.keys[tenant] = keys
        return tenant


@contextmanager
def console_env(tmp: Path, settings: dict[str, Any] | None = None, **app_kwargs: Any) -> Iterator[ConsoleEnv]:
    """keel's API with an embedded worker and the console mounted (not yet started);
    ``settings`` overrides :class:`keel.config.Settings` fields (a pack copy, the sweep period)."""
    from api.app import create_app
    from console import mount
    from engine.runtime import Runtime
    from keel.config import Settings

    rt = Runtime(Settings(data_dir=tmp, now=NOW, **(settings or {})))
    rt.ensure_fixtures()
    env = ConsoleEnv(rt=rt, app=None)
    env.tenants = (env.add_tenant("acme"), env.add_tenant())
    app_kwargs.setdefault("embedded_worker", True)
    env.app = mount(create_app(rt, worker_kwargs={"poll_s": 0.05}, **app_kwargs))
    try:
        yield env
    finally:
        rt.close()
