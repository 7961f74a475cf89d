"""keel's model gateway: validated triage, extraction and planning with provider fallback.

Graph nodes use :class:`ModelGateway` (built by :func:`gateway_from_settings`) and never
a model directly. Providers implement :class:`ModelProvider`; keel ships
:class:`LocalProvider` (deterministic rules, offline, the default) and
:class:`OpenAIProvider` (any OpenAI-compatible endpoint).
"""

from gateway.base import (
    OPERATION_ROUTE,
    ROUTE_OPERATIONS,
    TASKS,
    GatewayCall,
    InvalidOutput,
    ModelError,
    ModelProvider,
    PlanningInput,
    Task,
    Usage,
)
from gateway.gateway import CallHook, GatewayResult, ModelGateway, gateway_from_settings, provider_from_name
from gateway.local import LocalProvider, plan_locally
from gateway.openai_provider import OpenAIProvider
from gateway.prompts import SYSTEM_PROMPTS

__all__ = [
    "ModelGateway",
    "GatewayResult",
    "GatewayCall",
    "CallHook",
    "Usage",
    "ModelError",
    "InvalidOutput",
    "ModelProvider",
    "LocalProvider",
    "OpenAIProvider",
    "PlanningInput",
    "Task",
    "TASKS",
    "ROUTE_OPERATIONS",
    "OPERATION_ROUTE",
    "SYSTEM_PROMPTS",
    "gateway_from_settings",
    "provider_from_name",
    "plan_locally",
]
