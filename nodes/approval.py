"""AWAIT_APPROVAL of the support graph: the signed-plan approval interrupt of :mod:`nodes.blocks`.

The run pauses with ``interrupt()`` until a reviewer decides; a refused resume (stale hash,
a role the pack's ``approver_roles`` does not list, the requester approving their own run,
an upward edit) asks again with the error in the new interrupt's value. The rules are read
from the policy pack in force; an edited plan is re-signed and decided again. All of it is
the generic block, with the support workflow as :data:`nodes.policy_check.SUPPORT` describes it.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from graphs.context import SupportContext
from graphs.state import SupportState
from nodes import blocks
from nodes.common import traced
from nodes.policy_check import SUPPORT

__all__ = ["await_approval", "approval_request", "SUPPORT"]


def approval_request(state: SupportState) -> dict[str, Any]:
    """The interrupt's value: plan, hash, policy checks and evidence (batch contract)."""
    return blocks.approval_request(state, SUPPORT)


@traced("await_approval")
def await_approval(state: SupportState, config: RunnableConfig, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Wait for a valid decision, then approve (possibly an edited plan) or reject."""
    return blocks.await_approval(state, config, runtime.context, SUPPORT)
