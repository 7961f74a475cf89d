"""AWAIT_APPROVAL's pure part over typed state: the interrupt a reviewer sees.

``approval_request`` runs before ``interrupt()`` on every resume, so it must be pure and
its value plain JSON of the batch contract's shape, whether the state it reads was
written typed or is a checkpoint of the older dict shape.
"""

from __future__ import annotations

import json
from typing import Any

from graphs.state import RetrievedContext
from guards.injection import ScreenResult
from guards.policy import PolicyFacts
from keel.plan import Plan, sign_plan
from keel.types import ProposedAction, Ticket
from nodes.approval import approval_request
from support.node_fakes import KEY, NOW, PACK, TICKET, engine

ORDER = {"id": "O-1", "customer_id": "C-1", "status": "delivered", "total_cents": 9000, "refunded_cents": 0,
         "delivered_at": NOW.isoformat()}


def state(*, legacy: bool = False) -> dict[str, Any]:
    action = ProposedAction(tool="issue_refund", args={"order_id": "O-1", "amount_cents": 8000})
    signed = sign_plan(Plan(tenant="acme", customer_id="C-1", ticket_id="T-1", thread_id="th-1", route="billing",
                            policy_version=PACK.version, actions=[action]), KEY)
    verdict = engine().evaluate_plan(signed.plan.actions, PolicyFacts(tenant="acme", customer_id="C-1", now=NOW,
                                                                      orders={"O-1": ORDER}), route="billing")
    screen = ScreenResult(flagged=False, score=0.1, signals=["leetspeak"])
    st: dict[str, Any] = {"ticket": Ticket.model_validate(TICKET), "thread_id": "th-1", "requester": "req",
                          "route": "billing", "plan": signed, "policy": verdict, "screen": screen,
                          "context": RetrievedContext(orders=[ORDER]), "evidence": [{"tool": "get_order", "ok": True}]}
    if legacy:
        st.update(ticket=dict(TICKET), plan=signed.model_dump(mode="json"), policy=verdict.model_dump(mode="json"),
                  screen=screen.model_dump(), context=st["context"].model_dump())
    return st


def test_the_request_is_plain_json_of_the_contracts_shape():
    st = state()
    req = approval_request(st)
    assert json.loads(json.dumps(req)) == req  # no model leaks into an interrupt value
    assert set(req) == {"type", "thread_id", "tenant", "ticket_id", "customer_id", "requester", "route", "plan",
                        "plan_hash", "policy_version", "policy_checks", "evidence", "injection", "resume"}
    assert req["type"] == "plan_approval" and req["plan_hash"] == st["plan"].hash
    assert (req["tenant"], req["ticket_id"], req["customer_id"], req["requester"]) == ("acme", "T-1", "C-1", "req")
    assert req["plan"] == [{"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 8000},
                            "decision": "approve", "state": "pending_approval"}]
    assert req["policy_checks"] and all(c["action_index"] == 0 and c["tool"] == "issue_refund" for c in req["policy_checks"])
    assert {c["rule"] for c in req["policy_checks"]} >= {"ownership"}
    assert req["injection"]["flagged"] is False and req["injection"]["signals"] == ["leetspeak"]


def test_a_legacy_dict_checkpoint_gives_the_same_request():
    assert approval_request(state(legacy=True)) == approval_request(state())
