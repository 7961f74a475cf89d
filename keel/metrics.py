"""Prometheus metrics of keel's daily quotas (alerts, refusals, how much of a day is spent).

Only the instruments live here; serving them (a ``/metrics`` endpoint) is a separate
change. They are multi-process friendly, because ``keel serve`` and its workers are
several processes: counters are declared without their ``_total`` suffix (the client
adds it, in every exposition format alike), the gauge says how the values of several
processes combine (``mostrecent``: each process sets it from the shared database row,
so the latest write is the true value), and no label names a process. With
``PROMETHEUS_MULTIPROC_DIR`` set, ``prometheus_client.multiprocess.MultiProcessCollector``
then reports one series per label set.

Labels are bounded: tenant, scope (``tenant``/``user``) and quota (``tokens``/``runs``),
never a user id (one series per user would grow without limit); the audit row of an
alert names the user.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge

__all__ = ["QUOTA_ALERTS", "ADMISSION_REFUSALS", "QUOTA_USED_RATIO", "quota_alert", "admission_refused",
           "quota_used"]

Scope = Literal["tenant", "user"]
Quota = Literal["tokens", "runs"]

QUOTA_ALERTS = Counter(
    "keel_quota_alerts",
    "Daily quotas (of a tenant or of one of its users) that crossed the pack's alert ratio; once per day each",
    ["tenant", "scope", "quota"],
)
ADMISSION_REFUSALS = Counter(
    "keel_admission_refusals",
    "Run requests refused with 429 before they were queued, because a daily quota was spent",
    ["tenant", "scope", "quota"],
)
QUOTA_USED_RATIO = Gauge(
    "keel_quota_used_ratio",
    "Fraction of the tenant's daily quota used so far (1 or more: spent)",
    ["tenant", "quota"],
    multiprocess_mode="mostrecent",
)


def quota_alert(tenant: str, scope: Scope, quota: Quota) -> None:
    """Count one alert (a quota of ``tenant`` or of one of its users crossed the ratio)."""
    QUOTA_ALERTS.labels(tenant=tenant, scope=scope, quota=quota).inc()


def admission_refused(tenant: str, scope: Scope, quota: Quota) -> None:
    """Count one run request refused because the ``scope``'s ``quota`` is spent."""
    ADMISSION_REFUSALS.labels(tenant=tenant, scope=scope, quota=quota).inc()


def quota_used(tenant: str, quota: Quota, used: int, limit: int) -> None:
    """Record how much of the tenant's daily ``quota`` is used (a limit of 0 counts as spent)."""
    QUOTA_USED_RATIO.labels(tenant=tenant, quota=quota).set(used / limit if limit > 0 else 1.0)
