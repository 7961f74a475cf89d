"""One router per resource; :data:`ROUTERS` is what the app factory mounts."""

from api.routes import (
    approvals,
    assistants,
    audit,
    crons,
    dead_letters,
    escalations,
    fixtures,
    meta,
    metrics,
    runs,
    store,
    thread_state,
    threads,
    tickets,
    trace,
    webhooks,
)

ROUTERS = [
    meta.router,
    assistants.router,
    threads.router,
    thread_state.router,
    runs.router,
    store.router,
    crons.router,
    approvals.router,
    audit.router,
    trace.router,
    tickets.router,
    fixtures.router,
    dead_letters.router,
    escalations.router,
    webhooks.router,
    metrics.router,
]
"""Routers in OpenAPI order."""

__all__ = ["ROUTERS"]
