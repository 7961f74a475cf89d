"""Graph values as plain JSON: what the worker stores as stream events and the API returns."""

from __future__ import annotations

import dataclasses
from typing import Any

from langgraph.types import Interrupt

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """Graph values as plain JSON (pydantic models, Interrupts, tuples, dataclasses)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(mode="json"))
        except TypeError:
            return jsonable(dump())
    if isinstance(value, Interrupt):
        return {"value": jsonable(value.value), "id": value.id}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
