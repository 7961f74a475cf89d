"""Queue metrics read from the database at scrape time (no process holds them: any number of
servers and workers share one queue): depth and age of the oldest queued run per workflow,
runs executing, dead letters waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["QueueCollector"]


def _age_s(iso: str | None, now: float) -> float:
    if not iso:
        return 0.0
    try:
        return max(0.0, now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0.0


class QueueCollector(Collector):
    """``keel_queue_depth``, ``keel_queue_oldest_age_seconds``, ``keel_runs_running`` and
    ``keel_dead_letter_runs`` by workflow, from the run table of ``db``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT graph_id, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM api_runs"
                               " WHERE status IN ('pending', 'running', 'dead') GROUP BY graph_id, status")
        now = time.time()
        depth = GaugeMetricFamily("keel_queue_depth", "Runs queued (pending), by workflow", labels=["workflow"])
        age = GaugeMetricFamily("keel_queue_oldest_age_seconds", "Age of the oldest queued run, by workflow",
                                labels=["workflow"])
        running = GaugeMetricFamily("keel_runs_running", "Runs being executed now, by workflow", labels=["workflow"])
        dead = GaugeMetricFamily("keel_dead_letter_runs", "Runs in the dead letters now, by workflow",
                                 labels=["workflow"])
        for r in rows:
            if r["status"] == "pending":
                depth.add_metric([r["graph_id"]], r["n"])
                age.add_metric([r["graph_id"]], _age_s(r["oldest"], now))
            elif r["status"] == "running":
                running.add_metric([r["graph_id"]], r["n"])
            else:
                dead.add_metric([r["graph_id"]], r["n"])
        yield from (depth, age, running, dead)
