"""Correlation ids: one id ties a request, its run, their log lines, audit rows and traces.

The API's middleware sets :data:`correlation_var` for each request (``X-Request-ID`` or a
fresh id), a worker for each run it executes (the run's id from the request that queued
it); :class:`CorrelationFilter` puts it on every log record of that context.
"""

from __future__ import annotations

import contextvars
import logging
import sys

__all__ = ["correlation_var", "CorrelationFilter", "install_correlation_logging"]

correlation_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("keel_correlation_id", default=None)
"""The correlation id of the request or run being handled in this context."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [cid=%(correlation_id)s] %(message)s"
"""Log lines with time, level, logger and correlation id."""


class CorrelationFilter(logging.Filter):
    """Puts ``correlation_id`` on every record (``-`` outside a request or run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            record.correlation_id = correlation_var.get() or "-"
        return True


def install_correlation_logging() -> None:
    """Every handler of the root logger (a stderr one if there is none) tags its lines with
    the correlation id (``keel serve``, ``keel worker``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    for h in root.handlers:
        if not any(isinstance(f, CorrelationFilter) for f in h.filters):
            h.addFilter(CorrelationFilter())
            h.setFormatter(logging.Formatter(LOG_FORMAT))
