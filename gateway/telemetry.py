"""The model call span (OpenTelemetry GenAI semantic conventions) and model metrics.

One span per model attempt (each :class:`GatewayCall` the gateway emits), named
``{operation} {model}`` as the conventions ask, with ``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model`` and
``gen_ai.usage.input_tokens``/``output_tokens`` (what the tenant was charged), plus keel's
``keel.route.*`` (the routing rule and file that chose the model) and ``keel.model.*``;
never the prompt or the answer (they hold the ticket's text).
"""

from __future__ import annotations

import time

from gateway.base import GatewayCall
from keel import metrics, telemetry

__all__ = ["trace_model_call", "GEN_AI_PROVIDER"]

GEN_AI_PROVIDER = {"openai": "openai", "local": "keel.local"}
"""``gen_ai.provider.name`` of keel's provider kinds (well-known names where there is one)."""


def trace_model_call(call: GatewayCall) -> None:
    """Record one attempt that just ended: a span under the current node span (it started
    ``call.ms`` ago), its latency, and the tokens and cost charged to the run's tenant."""
    try:
        started_ns = time.time_ns() - int(call.ms * 1e6)
        model = getattr(call, "model", None) or call.provider
        kind = call.provider.split(":", 1)[0]
        telemetry.record_span(f"chat {model}", started_ns, {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": GEN_AI_PROVIDER.get(kind, kind),
            "gen_ai.request.model": str(model),
            "gen_ai.usage.input_tokens": call.tokens_in,
            "gen_ai.usage.output_tokens": call.tokens_out,
            "keel.model.task": call.task,
            "keel.model.provider": call.provider,
            "keel.model.ok": call.ok,
            "keel.model.attempt": getattr(call, "attempt", None),
            "keel.model.degraded": getattr(call, "degraded", None),
            "keel.model.cost_usd": getattr(call, "cost_usd", None),
            "keel.route.rule": getattr(call, "rule", None),
            "keel.route.routing": getattr(call, "routing", None),
        }, error=call.error, kind=telemetry.trace.SpanKind.CLIENT)
        metrics.model_called(call.task, call.provider, call.ok, call.ms / 1000, telemetry.run_labels.get().get("tenant"),
                             call.tokens_in, call.tokens_out, float(getattr(call, "cost_usd", 0.0) or 0.0))
    except Exception:  # noqa: BLE001 - telemetry never fails a model call
        telemetry.log.warning("could not trace a model call", exc_info=True)
