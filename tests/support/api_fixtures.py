"""Fixtures of the API tests (imported by the tests/test_api_*.py modules)."""

from __future__ import annotations

from datetime import datetime, timezone, UTC

import pytest


def _sep(url: str) -> str:
    return "&" if "?" in url else "?"


@pytest.fixture(scope="session")
def api_pg_url(pg_url):
    """The test run's Postgres database, under a URL of its own so the API tests get their own pool."""
    return pg_url + _sep(pg_url) + "application_name=keel_api_tests"


@pytest.fixture(scope="session")
def api_runtime(api_pg_url, tmp_path_factory):
    """One runtime on the real Postgres for the in-process API tests."""
    from keel.config import Settings
    from engine.runtime import Runtime

    settings = Settings(database_url=api_pg_url, data_dir=tmp_path_factory.mktemp("api-rt"),
                        now=datetime(2026, 11, 25, 12, tzinfo=UTC), plan_signing_key="api-test-key")
    rt = Runtime(settings)
    yield rt
    rt.close()
