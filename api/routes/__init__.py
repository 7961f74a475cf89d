"""One router per resource; :data:`ROUTERS` is what the app factory mounts."""

from api.routes import (
    approvals,
    assistants,
    audit,
    dead_letters,
    fixtures,
    meta,
    runs,
    threads,
    tickets,
)

ROUTERS = [
    meta.router,
    assistants.router,
    threads.router,
    runs.router,
    approvals.router,
    audit.router,
    tickets.router,
    fixtures.router,
    dead_letters.router,
]
"""Routers in OpenAPI order."""

__all__ = ["ROUTERS"]
