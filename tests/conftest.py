"""Shared test fixtures."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

PG_ADMIN_URL = os.environ.get("KEEL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""Server (and maintenance database) where each test run creates its own database."""


def _own_database(prefix: str) -> Iterator[str]:
    """URL of a fresh Postgres database ``<prefix>_<hex>``, dropped afterwards.

    Skips when the server is unreachable, except in CI (``CI=true``), where that fails.
    """
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {type(e).__name__}")
        pytest.skip("PostgreSQL server unreachable")
    name = f"{prefix}_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        # a new connection: the fault suite restarts the server during the session
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh Postgres database ``keel_t_<hex>`` for this test run, dropped at the end."""
    yield from _own_database("keel_t")


@pytest.fixture(scope="session")
def faults_pg_url() -> Iterator[str]:
    """A second database of this run for the fault suite's cluster: its worker processes
    live for the whole session and claim every queued run of their database, so no other
    test's runs may share it."""
    yield from _own_database("keel_tf")


# -- the order test files are handed out to the parallel processes ---------------------------------
DURATIONS_FILE = Path(__file__).with_name("durations.json")
"""Seconds each test file took in a full run (``scripts/test-durations`` writes it from a JUnit
report). ``scripts/test`` hands files to its processes in collection order
(``--no-loadscope-reorder``): the longest first, so no long file starts last and runs alone at
the end. A file missing from it (a new one) counts as short; a stale figure only costs balance."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        seconds: dict[str, float] = json.loads(DURATIONS_FILE.read_text())
    except (OSError, ValueError):
        return
    first_seen = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::", 1)[0], i)

    def key(item: pytest.Item) -> tuple[float, int]:
        path = item.nodeid.split("::", 1)[0]
        return (-float(seconds.get(path, 0.0)), first_seen[path])

    items.sort(key=key)  # stable: each file's tests keep their order
