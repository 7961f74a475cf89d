"""The tool call span (OpenTelemetry GenAI ``execute_tool``) and tool metrics.

One span per call through :class:`tools.runner.ToolRunner`, current while the tool runs:
``gen_ai.operation.name = execute_tool``, ``gen_ai.tool.name``, the outcome (``keel.tool.ok``,
``error.type`` = keel's error code), attempts and whether the ledger replayed it. Never the
arguments or the output (they hold customer records).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from keel import metrics, telemetry

__all__ = ["tool_span"]


@contextlib.contextmanager
def tool_span(name: str, tenant: str) -> Iterator[Callable[[Any], None]]:
    """A span around one tool call; yields the function to report its ``ToolResult`` with."""
    with telemetry.tracer().start_as_current_span(f"execute_tool {name}") as span:
        telemetry.set_attributes(span, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                        "gen_ai.tool.type": "function", "keel.tenant": tenant})

        def report(result: Any) -> None:
            ok = bool(getattr(result, "ok", False))
            code = getattr(result, "error_code", None)
            telemetry.set_attributes(span, {"keel.tool.ok": ok, "keel.tool.attempts": getattr(result, "attempts", None),
                                            "keel.tool.replayed": getattr(result, "replayed", None)})
            if not ok:
                span.set_attribute("error.type", code or "error")
                span.set_status(telemetry.Status(telemetry.trace.StatusCode.ERROR, code or "error"))
            metrics.tool_called(name, ok, code)

        yield report
