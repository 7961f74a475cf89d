"""The agent's memory proposals at the end of a support run (a step of COMPLETE and ESCALATE).

The node does not decide what is kept: it proposes a few items about the run's customer
and hands them to the memory desk (``engine.memory.CustomerMemory`` through the run
context), whose rule (``guards.memory_policy``) accepts or rejects each by data class and
never-store screen. Proposals are built from the finished run's state only (structured
fields, the ticket's channel and subject, never the model's free text), so the same run
proposes the same items: with the desk's per-thread keys a re-run after a resume writes
nothing new.
"""

from __future__ import annotations

import logging

from graphs.context import Remembers
from graphs.state import SupportState
from guards.memory_policy import MemoryProposal
from keel.types import Ticket
from nodes.common import raise_if_infrastructure, tenant_of

__all__ = ["memory_proposals", "remember"]

log = logging.getLogger("keel.nodes")


def memory_proposals(state: SupportState, status: str) -> list[MemoryProposal]:
    """What a finished run proposes to remember about its customer."""
    ticket = state.get("ticket")
    if not isinstance(ticket, Ticket):
        try:
            ticket = Ticket.model_validate(ticket)
        except Exception:  # an invalid ticket names no customer to remember
            return []
    codes = [str(c) for c in state.get("reason_codes") or []]
    actions = [f"{a['tool']}:{a['state']}" for a in state.get("actions") or [] if a.get("tool")]
    out = [MemoryProposal(data_class="contact_channel", slot="channel", value={"channel": ticket.channel or "email"})]
    out.append(MemoryProposal(data_class="interaction_summary", slot="summary", value={
        "ticket_id": ticket.id, "subject": ticket.subject[:200], "route": str(state.get("route") or "unknown"),
        "status": status, "reason_codes": codes, "actions": actions}))
    if status == "escalated":
        out.append(MemoryProposal(data_class="case_fact", slot="open_case",
                                  value={"ticket_id": ticket.id, "state": "escalated", "reason_codes": codes}))
    return out


def remember(ctx: Remembers, state: SupportState, status: str) -> None:
    """Hand the run's proposals to the memory desk (nothing when the run keeps no memory)."""
    if ctx.memory is None or not state.get("thread_id"):
        return
    proposals = memory_proposals(state, status)
    if not proposals:
        return
    ticket = state["ticket"]
    customer = ticket.customer_id if isinstance(ticket, Ticket) else str(ticket["customer_id"])
    try:
        ctx.memory.propose(tenant_of(state), customer, state["thread_id"], proposals,
                           correlation_id=state.get("correlation_id"))
    except Exception as e:  # memory is not the run's outcome: a failed write must not fail the run
        raise_if_infrastructure(e)
        log.warning("memory proposals of thread %s not stored: %s", state["thread_id"], type(e).__name__)
