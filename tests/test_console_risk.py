"""The console's risk ranking names real tools (a misspelt name silently ranks a tool low)."""

from __future__ import annotations

from console.views import _SENSITIVE_TOOLS
from tools.registry import TOOLS


def test_every_sensitive_tool_is_a_declared_tool() -> None:
    assert _SENSITIVE_TOOLS <= set(TOOLS), sorted(_SENSITIVE_TOOLS - set(TOOLS))
