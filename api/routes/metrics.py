"""``GET /metrics``: Prometheus exposition of keel's metrics (:mod:`keel.metrics`) plus the
queue's, read from the database at scrape time (:mod:`engine.queue_metrics`).

Who sees what: series name tenants (tokens, cost, quotas), so the endpoint is not public.
The operator's scraper sends ``Authorization: Bearer $KEEL_METRICS_TOKEN`` and sees every
tenant; a tenant's admin key sees the same exposition with other tenants' series left out.

Several processes (``keel serve`` and any number of ``keel worker``) each count their own
events. With ``PROMETHEUS_MULTIPROC_DIR`` set (the same empty directory for every process
of a host, wiped at deploy), every process writes its values there and a scrape of any
server reports the sum over all of them (``prometheus_client.multiprocess``); without it a
scrape reports the serving process only (the embedded single-process ``keel serve``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.deps import ApiState, get_principal, get_state
from api.models import ErrorOut
from engine.queue_metrics import QueueCollector

router = APIRouter(tags=["meta"])

_ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (401, "Missing or wrong key (the metrics token, or an admin's API key)"),
    (403, "Not an admin key"), (429, "Rate limit exceeded (see Retry-After)"),
    (503, "Database briefly unavailable; retry (see Retry-After)"))}


class _TenantView(Collector):
    """The series of ``source`` without other tenants' (a series labelled ``tenant``)."""

    def __init__(self, source: Collector, tenant: str | None) -> None:
        self.source, self.tenant = source, tenant

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if self.tenant is not None:
                family.samples = [s for s in family.samples if s.labels.get("tenant", self.tenant) == self.tenant]
            yield family


def _caller_tenant(request: Request, st: ApiState) -> str | None:
    """None for the operator's metrics token (every tenant); else the admin key's tenant."""
    token = st.runtime.settings.metrics_token
    given = request.headers.get("authorization", "")
    if token is not None and hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
        return None
    principal = get_principal(request)  # 401 / 429 as for every other endpoint
    if principal.role != "admin":
        raise HTTPException(403, "requires role admin (or the metrics token)")
    return principal.tenant


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}, **_ERRORS},
    openapi_extra={"security": [{"Bearer": []}, {"ApiKey": []}]})
def metrics(request: Request, st: ApiState = Depends(get_state)) -> Response:
    """Runs by workflow and outcome, approval wait, tool failures, node and model latency,
    tokens and cost per tenant, dead letters, leases lost, queue depth and oldest age."""
    tenant = _caller_tenant(request, st)
    source: Collector = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        MultiProcessCollector(source)
    view = CollectorRegistry()
    view.register(_TenantView(source, tenant))
    view.register(QueueCollector(st.runtime.db))
    return Response(generate_latest(view), media_type=CONTENT_TYPE_LATEST)
