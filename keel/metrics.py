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
           "quota_used", "CACHE_HITS", "CACHE_MISSES", "cache_hit", "cache_miss"]

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


# ------------------------------------------------------------------ runs, nodes, models, tools
# Label values are bounded: workflow (graph id), outcome, node, task, provider, tool, error code
# and tenant (tokens and cost per tenant are what an operator bills and budgets by).
from prometheus_client import Histogram  # noqa: E402 - grouped with the instruments below

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

RUNS = Counter("keel_runs", "Runs that ended an attempt, by workflow and outcome (completed, awaiting_approval, "
               "escalated, rejected, interrupted, cancelled, error, retry, dead)", ["workflow", "outcome"])
"""Escalation rate: ``keel_runs_total{outcome="escalated"}`` over the sum of final outcomes."""
APPROVAL_WAIT = Histogram("keel_approval_wait_seconds", "Time a plan waited for its reviewer's decision",
                          ["workflow", "decision"], buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400))
TOOL_CALLS = Counter("keel_tool_calls", "Tool calls, by tool and outcome (ok or the error code)", ["tool", "outcome"])
TOOL_FAILURES = Counter("keel_tool_failures", "Tool calls that failed, by tool and error code", ["tool", "code"])
NODE_SECONDS = Histogram("keel_node_seconds", "Wall time of one graph node", ["workflow", "node"],
                         buckets=_LATENCY_BUCKETS)
MODEL_SECONDS = Histogram("keel_model_seconds", "Wall time of one model call", ["task", "provider", "ok"],
                          buckets=_LATENCY_BUCKETS)
TOKENS = Counter("keel_tokens", "Model tokens charged, by tenant and direction (input, output)", ["tenant", "direction"])
COST = Counter("keel_cost_usd", "Estimated model cost in US dollars, by tenant", ["tenant"])
DEAD_LETTERS = Counter("keel_dead_letters", "Runs moved to the dead letters", ["workflow", "reason"])
LEASES_LOST = Counter("keel_leases_lost", "Runs whose worker lost its lease mid-run (another worker took over)",
                      ["workflow"])


def run_ended(workflow: str, outcome: str) -> None:
    """Count one run attempt that ended with ``outcome``."""
    RUNS.labels(workflow=workflow, outcome=outcome).inc()


def tool_called(tool: str, ok: bool, code: str | None) -> None:
    """Count one tool call (and a failure, with its error code)."""
    TOOL_CALLS.labels(tool=tool, outcome="ok" if ok else (code or "error")).inc()
    if not ok:
        TOOL_FAILURES.labels(tool=tool, code=code or "error").inc()


def model_called(task: str, provider: str, ok: bool, seconds: float, tenant: str | None, tokens_in: int,
                 tokens_out: int, cost_usd: float) -> None:
    """Record one model call: its latency, and the tokens and cost charged to the tenant."""
    MODEL_SECONDS.labels(task=task, provider=provider, ok=str(ok).lower()).observe(seconds)
    t = tenant or "-"
    if tokens_in:
        TOKENS.labels(tenant=t, direction="input").inc(tokens_in)
    if tokens_out:
        TOKENS.labels(tenant=t, direction="output").inc(tokens_out)
    if cost_usd:
        COST.labels(tenant=t).inc(cost_usd)


# ------------------------------------------------------------------ caches (gateway.cache, tools.cache)
CacheKind = Literal["model", "tool"]

CACHE_HITS = Counter("keel_cache_hits", "Model calls and read-only tool calls answered from keel's cache",
                     ["kind", "tenant"])
CACHE_MISSES = Counter("keel_cache_misses", "Cacheable model and tool calls the cache could not answer",
                       ["kind", "tenant"])


def cache_hit(kind: CacheKind, tenant: str) -> None:
    """Count one call answered from the cache (no model request, no tool run)."""
    CACHE_HITS.labels(kind=kind, tenant=tenant or "-").inc()


def cache_miss(kind: CacheKind, tenant: str) -> None:
    """Count one cacheable call the cache had no fresh answer for."""
    CACHE_MISSES.labels(kind=kind, tenant=tenant or "-").inc()


# ------------------------------------------------------------------ releases (engine.releases)
# Labels: release id (a handful per deploy), metric (safety, error, escalation), graph id,
# shadow result (same, changed, failed, skipped).
RELEASE_ROLLBACKS = Counter("keel_release_rollbacks", "Canary releases that rolled back by themselves, by release "
                            "and the metric on which the candidate was worse than stable", ["release", "metric"])
RELEASE_CANARY_SHARE = Gauge("keel_release_canary_share", "Share of new runs of the graph the active canary's "
                             "candidate takes (0 when no canary is active)", ["graph"], multiprocess_mode="mostrecent")
RELEASE_SHADOW = Counter("keel_release_shadow_runs", "Live runs replayed under a shadow release's candidate, by result "
                         "(same, changed, failed, skipped)", ["release", "result"])


CLAIM_GATE_LAG_MS = Gauge("keel_worker_sched_lag_ms", "Smoothed scheduling lag of this worker process (ms): how "
                          "late a sampler thread wakes up, i.e. how long runnable steps wait for CPU")
CLAIM_GATE_LIMIT = Gauge("keel_worker_claim_limit", "Runs this worker process may hold now (the claim gate's "
                         "adaptive limit)")


def claim_gate(lag_ms: float, limit: int) -> None:
    """The claim gate's view, once a second (engine.claim_gate)."""
    CLAIM_GATE_LAG_MS.set(lag_ms)
    CLAIM_GATE_LIMIT.set(limit)
