"""The in-process limiter of the embedded (SQLite, one process) server: GCRA per key
(keel.ratelimit's, the one in-process limiter, also the tool runner's)."""

from __future__ import annotations

import pytest

from api.ratelimit import LocalRateLimiter, SharedRateLimiter, rate_limiter


def test_local_limiter_allows_the_burst_then_the_sustained_rate():
    now = [1000.0]
    lim = LocalRateLimiter(per_minute=60, burst=3, clock=lambda: now[0])  # one a second, three at once
    assert [lim.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("k") == pytest.approx(1.0)
    assert lim.take("other") == 0.0  # per key
    now[0] += 0.5
    assert lim.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert lim.take("k") == 0.0 and lim.take("k") == pytest.approx(1.0)
    now[0] += 60
    assert [lim.take("k") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_rate_zero_turns_limiting_off():
    lim = LocalRateLimiter(per_minute=0)
    assert all(lim.take("k") == 0.0 for _ in range(1000))


def test_embedded_sqlite_gets_the_local_limiter(tmp_path):
    from keel.db import open_database

    db = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        lim = rate_limiter(db, 5)
        assert isinstance(lim, LocalRateLimiter) and not isinstance(lim, SharedRateLimiter)
    finally:
        db.close()
