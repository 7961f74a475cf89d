"""Correlation ids: one id ties a request, its run, their log lines, audit rows and traces.

The API's middleware sets :data:`correlation_var` for each request (``X-Request-ID`` or a
fresh id), a worker for each run it executes (the run's id from the request that queued
it); :class:`CorrelationFilter` puts it on every log record of that context, with the
tenant, thread and run of the run being executed (:data:`keel.telemetry.run_labels`) and
the current trace and span ids, so a log line leads to its trace and back.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, UTC
from typing import Literal

from opentelemetry import trace

from keel.telemetry import run_labels

__all__ = ["correlation_var", "CorrelationFilter", "JsonFormatter", "install_correlation_logging"]

correlation_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("keel_correlation_id", default=None)
"""The correlation id of the request or run being handled in this context."""

LOG_FORMAT = ("%(asctime)s %(levelname)s %(name)s [cid=%(correlation_id)s tenant=%(tenant)s thread=%(thread_id)s"
              " run=%(run_id)s] %(message)s")
"""Text log lines with time, level, logger, correlation id, tenant, thread and run."""

_CONTEXT_FIELDS = ("correlation_id", "tenant", "thread_id", "run_id", "trace_id", "span_id")


class CorrelationFilter(logging.Filter):
    """Puts ``correlation_id``, ``tenant``, ``thread_id``, ``run_id``, ``trace_id`` and
    ``span_id`` on every record (``-`` where the context has none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            record.correlation_id = correlation_var.get() or "-"
        labels = run_labels.get()
        for name in ("tenant", "thread_id", "run_id"):
            if not getattr(record, name, None):
                setattr(record, name, labels.get(name) or "-")
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "-"
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the context
    fields (null where there is none) and ``exc`` for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            out[name] = None if value in (None, "-") else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def install_correlation_logging(fmt: Literal["json", "text"] = "json") -> None:
    """Every handler of the root logger (a stderr one if there is none) tags its lines with
    the correlation id, tenant, thread and run, as JSON or text (``keel serve``, ``keel worker``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    for h in root.handlers:
        if not any(isinstance(f, CorrelationFilter) for f in h.filters):
            h.addFilter(CorrelationFilter())
        h.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT))
