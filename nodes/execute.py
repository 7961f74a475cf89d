"""EXECUTE_ACTION of the support graph: run a validated (and, where required, approved) plan, exactly once.

Execution re-checks what it is handed instead of trusting the state (:func:`nodes.blocks.execute_plan`):
the plan's hash and HMAC must match its content and its tenant and customer the ticket's;
the policy decides the signed plan again (the stricter of that and the stored verdict wins);
an approval must name that same hash and have been recorded in the audit log; and each
side effect carries an idempotency key derived from (thread, plan hash, action index), so a
re-run after a crash or a resume returns the ledger's first result instead of acting
again. A refund is decided once more inside its own transaction, under its customer's lock
(``refund_guard``), so two runs racing cannot both slip under the refund velocity limits.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs.context import SupportContext
from graphs.state import SupportState
from nodes import blocks
from nodes.policy_check import SUPPORT
from nodes.blocks import ToolFailure
from nodes.common import traced

__all__ = ["execute_action", "ToolFailure"]


@traced("execute_action")
def execute_action(state: SupportState, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Execute every action the policy (and reviewer) allowed."""
    return blocks.execute_plan(state, runtime.context, SUPPORT)
