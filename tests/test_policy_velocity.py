"""Refund velocity: the amount tiers over a customer's refunds across tickets.

A refund split over tickets (4,500 then 4,499 on one order) must not pass as two small
refunds. The pure engine is tested over plain facts; the store over keel's database; the
graph end to end, including two runs racing past their policy checks.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Command

from guards.pack import DEFAULT_POLICY_PATH, PolicyError, PolicyPack, load_policy
from guards.policy import KeelRefund, PolicyEngine, PolicyFacts
from keel.config import Settings
from engine.runtime import Runtime
from keel.types import ProposedAction
from tools.fixtures import parse_fixtures_text
from tools.refund_history import RefundHistory
from tools.registry import cards

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PACK = load_policy()
ENGINE = PolicyEngine(PACK, cards())


# --------------------------------------------------------------------------- engine over facts


def _order(total: int = 100_000, refunded: int = 0, customer: str = "C-1") -> dict[str, Any]:
    return {"customer_id": customer, "status": "delivered", "total_cents": total, "refunded_cents": refunded,
            "delivered_at": (NOW - timedelta(days=5)).isoformat()}


def _prior(order_id: str, cents: int, state: str = "executed", age: timedelta = timedelta(hours=1)) -> KeelRefund:
    return KeelRefund(order_id=order_id, amount_cents=cents, state=state, at=NOW - age)


def _facts(*prior: KeelRefund, orders: dict[str, dict[str, Any]] | None = None) -> PolicyFacts:
    return PolicyFacts(tenant="acme", customer_id="C-1", now=NOW, customer={"id": "C-1", "identity_level": 2},
                       orders=orders or {"O-1": _order(), "O-2": _order(), "O-3": _order(), "O-4": _order()},
                       keel_refunds=list(prior))


def _refund(order_id: str = "O-1", cents: int = 4499) -> ProposedAction:
    return ProposedAction(tool="issue_refund", args={"order_id": order_id, "amount_cents": cents})


def _decide(facts: PolicyFacts, action: ProposedAction | None = None, engine: PolicyEngine = ENGINE) -> tuple[str, list[str]]:
    d = engine.evaluate(action or _refund(), facts, "billing")
    return d.decision, d.reason_codes


def _engine(**replace: str) -> PolicyEngine:
    text = DEFAULT_POLICY_PATH.read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return PolicyEngine(PolicyPack.from_toml(text), cards())


def test_each_refund_alone_executes() -> None:
    assert _decide(_facts()) == ("execute", [])
    assert _decide(_facts(), _refund(cents=5000)) == ("execute", [])


@pytest.mark.parametrize("state", ["executed", "pending"])
def test_split_across_tickets_needs_approval(state: str) -> None:
    """4,500 already refunded (or waiting for approval) on the order + 4,499 now crosses 5,000."""
    decision, codes = _decide(_facts(_prior("O-1", 4500, state)))
    assert (decision, codes) == ("approve", ["velocity_limit"])


def test_velocity_check_tells_the_reviewer_why() -> None:
    d = ENGINE.evaluate(_refund(), _facts(_prior("O-1", 4500), _prior("O-2", 300, "pending")), "billing")
    check = d.checks[-1]
    assert (check.rule, check.result, check.reason_code) == ("refund.velocity", "fail", "velocity_limit")
    assert "order O-1 8999 cents" in check.detail and "customer 9299 cents in 3 refunds" in check.detail
    assert "1 executed, 1 pending approval" in check.detail and "30 days" in check.detail
    # a refund within every limit still records the rule, as a pass
    ok = ENGINE.evaluate(_refund(cents=100), _facts(), "billing").checks[-1]
    assert (ok.rule, ok.result, ok.reason_code) == ("refund.velocity", "pass", None)


def test_customer_limit_spans_orders() -> None:
    """Per order every refund is small; the customer's 3,000 + 2,500 crosses 5,000."""
    assert _decide(_facts(_prior("O-2", 3000)), _refund("O-1", 2500)) == ("approve", ["velocity_limit"])
    assert _decide(_facts(_prior("O-2", 2500)), _refund("O-1", 2500)) == ("execute", [])


def test_cumulative_over_the_approval_ceiling_escalates() -> None:
    assert _decide(_facts(_prior("O-1", 45_000)), _refund("O-1", 6000)) == ("escalate", ["velocity_limit"])
    assert _decide(_facts(_prior("O-2", 45_000)), _refund("O-1", 6000)) == ("escalate", ["velocity_limit"])
    assert _decide(_facts(_prior("O-2", 44_000)), _refund("O-1", 6000)) == ("approve", [])


def test_count_limit() -> None:
    """The customer's 4th refund in the period needs approval, however small."""
    three = [_prior(f"O-{i}", 100) for i in (2, 3, 4)]
    assert _decide(_facts(*three), _refund("O-1", 100)) == ("approve", ["velocity_limit"])
    assert _decide(_facts(*three[:2]), _refund("O-1", 100)) == ("execute", [])
    every = _engine(**{"max_auto_count = 3 ": "max_auto_count = 0 "})
    assert _decide(_facts(), _refund("O-1", 100), every) == ("approve", ["velocity_limit"])


def test_window_expiry() -> None:
    """Executed refunds older than the period do not count; at exactly the period they do."""
    assert _decide(_facts(_prior("O-1", 4500, age=timedelta(days=30, seconds=1)))) == ("execute", [])
    assert _decide(_facts(_prior("O-1", 4500, age=timedelta(days=30)))) == ("approve", ["velocity_limit"])
    # a refund stamped after the run clock (clocks disagree) counts
    assert _decide(_facts(_prior("O-1", 4500, age=-timedelta(hours=2)))) == ("approve", ["velocity_limit"])
    hourly = _engine(**{"period_days = 30 ": "period_hours = 24 "})
    assert _decide(_facts(_prior("O-1", 4500, age=timedelta(hours=25))), engine=hourly) == ("execute", [])
    assert _decide(_facts(_prior("O-1", 4500, age=timedelta(hours=23))), engine=hourly) == ("approve", ["velocity_limit"])


def test_pending_refunds_count_whatever_their_age_unless_the_pack_says_not() -> None:
    old_pending = _prior("O-1", 4500, "pending", age=timedelta(days=90))
    assert _decide(_facts(old_pending)) == ("approve", ["velocity_limit"])
    ignore = _engine(**{"count_pending = true": "count_pending = false"})
    assert _decide(_facts(old_pending), engine=ignore) == ("execute", [])
    assert _decide(_facts(_prior("O-1", 4500)), engine=ignore) == ("approve", ["velocity_limit"])


def test_unpaid_amounts_count_only_up_to_what_is_refundable() -> None:
    """Repeating one 8,999 request on an 8,999 order is not 8,999 × n at risk: it stays approve."""
    orders = {"O-1": _order(total=8999), "O-2": _order(total=1000, refunded=1000)}
    dupes = [_prior("O-1", 8999, "pending") for _ in range(7)]
    assert _decide(_facts(*dupes, orders=orders), _refund("O-1", 8999)) == ("approve", [])
    # a pending refund on a fully refunded order can never be paid: it adds no amount
    assert _decide(_facts(_prior("O-2", 1000, "pending"), orders=orders), _refund("O-1", 4500)) == ("execute", [])
    # executed refunds are money already paid: never capped
    assert _decide(_facts(_prior("O-1", 4000), orders={"O-1": _order(total=8999, refunded=4000)}),
                   _refund("O-1", 4999)) == ("approve", ["velocity_limit"])


def test_a_plans_earlier_refunds_count_toward_its_later_ones() -> None:
    plan = ENGINE.evaluate_plan([_refund("O-1", 3000), _refund("O-2", 3000)], _facts(), "billing")
    assert [d.decision for d in plan.per_action] == ["execute", "approve"]
    assert (plan.overall, plan.reason_codes) == ("approve", ["velocity_limit"])
    assert "1 earlier in this plan" in plan.per_action[1].checks[-1].detail


def test_velocity_never_lowers_a_decision() -> None:
    assert _decide(_facts(), _refund("O-1", 60_000)) == ("escalate", ["amount_over_agent_limit"])
    assert _decide(_facts(), _refund("O-1", 6000)) == ("approve", [])
    over = _facts(orders={"O-1": _order(total=1000)})
    assert _decide(over, _refund("O-1", 2000)) == ("deny", ["amount_exceeds_refundable"])


# --------------------------------------------------------------------------- the pack


def _pack(**replace: str) -> str:
    text = DEFAULT_POLICY_PATH.read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_bundled_pack_states_the_velocity_rule() -> None:
    v = PACK.refund.velocity
    assert (v.period, v.max_auto_cents, v.max_approve_cents, v.max_auto_count, v.count_pending) == (
        timedelta(days=30), 5000, 50000, 3, True)


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        ({"[refund.velocity]": "[refund.speed]"}, "refund.velocity"),
        ({"period_days = 30 ": "period_hours = 24\nperiod_days = 30 "}, "exactly one of period_days"),
        ({"period_days = 30 ": "# no period "}, "exactly one of period_days"),
        ({"period_days = 30 ": "period_days = 0 "}, "period_days"),
        ({"max_auto_cents = 5000 ": "max_auto_cents = 60000 "}, "max_auto_cents must not exceed max_approve_cents"),
        ({"max_auto_cents = 5000 ": "max_auto_cents = 4000 "}, "below auto_max_cents"),
        ({"max_approve_cents = 50000 ": "max_approve_cents = 40000 "}, "below approve_max_cents"),
        ({"max_auto_count = 3 ": "max_auto_count = -1 "}, "max_auto_count"),
        ({"count_pending = true": 'count_pending = "yes"'}, "count_pending"),
        ({"count_pending = true": "count_pending = true\nforever = true"}, "forever"),
    ],
)
def test_bad_velocity_rules_are_rejected(tmp_path: Path, replace: dict[str, str], fragment: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(_pack(**replace))
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


# --------------------------------------------------------------------------- the graph


def _demo(tenant: str = "acme") -> Any:
    raw = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())
    return parse_fixtures_text(json.dumps({**raw, "tenant": tenant})).fixtures


def _runtime(data_dir: Path, now: datetime = NOW, database_url: str | None = None) -> Runtime:
    rt = Runtime(Settings(data_dir=data_dir, now=now, plan_signing_key="velocity-key", database_url=database_url))
    return rt


@pytest.fixture()
def rt(tmp_path):
    runtime = _runtime(tmp_path)
    runtime.backoffice.load_fixtures(_demo())
    runtime.principals.upsert("acme", "boss", "approver")
    yield runtime
    runtime.close()


def _ticket(body: str, customer: str = "C-1002", tenant: str = "acme") -> dict[str, Any]:
    return {"id": "V-" + uuid.uuid4().hex[:6], "tenant": tenant, "customer_id": customer, "subject": "Refund",
            "body": body}


def _run(rt: Runtime, body: str, customer: str = "C-1002", tenant: str = "acme", **kw: Any) -> tuple[dict, dict]:
    cfg = {"configurable": {"thread_id": str(uuid.uuid4()), "requester": "req"}}
    return rt.graph().invoke({"ticket": _ticket(body, customer, tenant)}, cfg, **kw, context=rt.context()), cfg


def _refund_rows(rt: Runtime, tenant: str = "acme") -> list[dict[str, Any]]:
    return rt.backoffice.list_refunds(tenant, "O-5002")


def test_split_refund_second_ticket_goes_to_approval(rt) -> None:
    """The issue's example: 45.00 then 44.99 on O-5002; the second waits for a human."""
    first, _ = _run(rt, "Please refund $45.00 on order O-5002, it arrived scratched.")
    assert first["status"] == "completed" and first["actions"][0]["state"] == "executed"
    second, cfg = _run(rt, "Please refund $44.99 on order O-5002, the handle is loose.")
    assert second["status"] == "awaiting_approval" and second["reason_codes"] == ["velocity_limit"]
    assert second["actions"][0]["decision"] == "approve"
    assert [r["amount_cents"] for r in _refund_rows(rt)] == [4500]
    req = second["__interrupt__"][0].value
    (check,) = [c for c in req["policy_checks"] if c["rule"] == "refund.velocity"]
    assert check["reason_code"] == "velocity_limit" and "order O-5002 8999 cents" in check["detail"]
    # a reviewer's approval pays it
    final = rt.graph().invoke(Command(resume={"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss"}),
                              cfg, context=rt.context())
    assert final["status"] == "completed"
    assert sorted(r["amount_cents"] for r in _refund_rows(rt)) == [4499, 4500]


def test_fourth_small_refund_needs_approval(rt) -> None:
    states = [_run(rt, "Please refund $5.00 on order O-5002, a part is missing.")[0] for _ in range(4)]
    assert [s["status"] for s in states] == ["completed"] * 3 + ["awaiting_approval"]
    assert states[3]["reason_codes"] == ["velocity_limit"]
    assert len(_refund_rows(rt)) == 3


def test_another_customer_is_not_affected(rt) -> None:
    _run(rt, "Please refund $45.00 on order O-5002, it arrived scratched.")
    _run(rt, "Please refund $60.00 on order O-5002, it arrived scratched.")  # pending approval
    other, _ = _run(rt, "My order O-5001 arrived broken, I want my money back.", customer="C-1001")
    assert other["status"] == "completed" and other["actions"][0]["args"]["amount_cents"] == 4599


def test_pending_approval_counts_until_it_is_decided(rt) -> None:
    waiting, cfg = _run(rt, "Please refund $60.00 on order O-5002, it arrived scratched.")
    assert waiting["status"] == "awaiting_approval" and waiting["reason_codes"] == []
    second, _ = _run(rt, "Please refund $10.00 on order O-5002, a part is missing.")
    assert second["status"] == "awaiting_approval" and second["reason_codes"] == ["velocity_limit"]
    req = waiting["__interrupt__"][0].value
    rejected = rt.graph().invoke(Command(resume={"decision": "reject", "plan_hash": req["plan_hash"],
                                                 "reviewer": "boss", "reason": "no"}), cfg, context=rt.context())
    assert rejected["status"] == "rejected"
    # the rejected 60.00 no longer counts; the 10.00 still waiting does: 20.00 in 2 refunds
    third, _ = _run(rt, "Please refund $10.00 on order O-5002, a part is missing.")
    assert third["status"] == "completed" and _refund_rows(rt)[0]["amount_cents"] == 1000


@pytest.mark.parametrize(("first_age", "second"), [(timedelta(days=31), "completed"), (timedelta(days=29), "awaiting_approval")])
def test_refunds_older_than_the_period_do_not_count(tmp_path, first_age: timedelta, second: str) -> None:
    """A refund made 31 days before the run clock is outside the 30-day period; 29 days is inside."""
    raw = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())
    raw["orders"].append({**next(o for o in raw["orders"] if o["id"] == "O-5002"), "id": "O-5099",
                          "delivered_at": (NOW - timedelta(days=35)).isoformat().replace("+00:00", "Z")})
    earlier = _runtime(tmp_path, now=NOW - first_age)
    earlier.backoffice.load_fixtures(parse_fixtures_text(json.dumps(raw)).fixtures)
    try:
        first, _ = _run(earlier, "Please refund $45.00 on order O-5099, it arrived scratched.")
        assert first["status"] == "completed"
    finally:
        earlier.close()
    later = _runtime(tmp_path)
    try:
        state, _ = _run(later, "Please refund $44.99 on order O-5002, the handle is loose.")
        assert state["status"] == second
        assert state["reason_codes"] == ([] if second == "completed" else ["velocity_limit"])
    finally:
        later.close()


def test_execution_decides_again_after_another_run_refunded(rt) -> None:
    """Both runs pass POLICY_CHECK alone; the one executing second sees the first's refund."""
    a, a_cfg = _run(rt, "Please refund $45.00 on order O-5002, it arrived scratched.", interrupt_before=["execute_action"])
    assert a["policy"]["overall"] == "execute" and not _refund_rows(rt)
    b, _ = _run(rt, "Please refund $44.99 on order O-5002, the handle is loose.")
    assert b["status"] == "completed"
    late = rt.graph().invoke(None, a_cfg, context=rt.context())
    assert late["status"] == "escalated" and "velocity_limit" in late["reason_codes"]
    assert [r["amount_cents"] for r in _refund_rows(rt)] == [4499]


def test_a_run_is_never_counted_against_itself(rt) -> None:
    """Killed after its refund committed but before its checkpoint: the resumed run replays
    the ledger instead of counting its own refund as another one (4,500 twice > 5,000)."""
    from keel.plan import idempotency_key
    from tools.runner import ToolContext

    paused, cfg = _run(rt, "Please refund $45.00 on order O-5002, it arrived scratched.",
                       interrupt_before=["execute_action"])
    plan = paused["plan"]
    action = plan["plan"]["actions"][0]
    key = idempotency_key(plan["plan"]["thread_id"], plan["hash"], 0)
    ctx = ToolContext(tenant="acme", customer_id="C-1002", user_id="req", allowlist=frozenset({"issue_refund"}),
                      idempotency_key=key, now=NOW)
    assert rt.tools.call("issue_refund", action["args"], ctx).ok  # the side effect of the lost attempt
    final = rt.graph().invoke(None, cfg, context=rt.context())
    assert final["status"] == "completed" and final["results"][0]["replayed"] is True
    assert [r["amount_cents"] for r in _refund_rows(rt)] == [4500]


def _race(rt: Runtime, tenant: str) -> list[dict[str, Any]]:
    """Two runs past their policy checks and execution's first re-check, then refunding at once."""
    paused = [_run(rt, body, tenant=tenant, interrupt_before=["execute_action"])
              for body in ("Please refund $45.00 on order O-5002, it arrived scratched.",
                           "Please refund $44.99 on order O-5002, the handle is loose.")]
    assert [s["policy"]["overall"] for s, _ in paused] == ["execute", "execute"]
    barrier = threading.Barrier(2, timeout=30)
    rt.tools.fault_hook = lambda tool, attempt: barrier.wait() if tool == "issue_refund" and attempt == 1 else None
    finals: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def resume(cfg: dict) -> None:
        try:
            finals.append(rt.graph().invoke(None, cfg, context=rt.context()))
        except BaseException as e:  # reported below, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=resume, args=(cfg,)) for _, cfg in paused]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return finals


def _assert_one_won(rt: Runtime, finals: list[dict[str, Any]], tenant: str) -> None:
    assert sorted(f["status"] for f in finals) == ["completed", "escalated"]
    (lost,) = [f for f in finals if f["status"] == "escalated"]
    assert lost["reason_codes"] == ["velocity_limit"]
    assert len(_refund_rows(rt, tenant)) == 1
    assert rt.backoffice.get_order(tenant, "O-5002")["refunded_cents"] in (4500, 4499)


def test_racing_runs_cannot_both_slip_under(rt) -> None:
    _assert_one_won(rt, _race(rt, "acme"), "acme")


@pytest.mark.postgres
def test_racing_runs_cannot_both_slip_under_on_postgres(pg_url, tmp_path) -> None:
    """On Postgres (READ COMMITTED) the customer's advisory lock serializes the re-checks."""
    runtime = _runtime(tmp_path, database_url=pg_url)
    tenant = "vel" + uuid.uuid4().hex[:8]
    try:
        runtime.backoffice.load_fixtures(_demo(tenant))
        _assert_one_won(runtime, _race(runtime, tenant), tenant)
    finally:
        runtime.close()


@pytest.mark.postgres
def test_customer_lock_waits_for_the_holder(pg_url, tmp_path) -> None:
    runtime = _runtime(tmp_path, database_url=pg_url)
    history = RefundHistory(runtime.db)
    tenant = "vel" + uuid.uuid4().hex[:8]
    held, release, got = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with runtime.db.transaction() as tx:
            history.lock(tx, tenant, "C-1")
            held.set()
            release.wait(10)

    def waiter(customer: str, flag: threading.Event) -> None:
        with runtime.db.transaction() as tx:
            history.lock(tx, tenant, customer)
            flag.set()

    try:
        first = threading.Thread(target=holder)
        first.start()
        assert held.wait(10)
        other = threading.Event()
        threading.Thread(target=waiter, args=("C-2", other)).start()
        assert other.wait(10), "another customer's lock is independent"
        second = threading.Thread(target=waiter, args=("C-1", got))
        second.start()
        assert not got.wait(0.3), "the same customer's lock waits for its holder"
        release.set()
        assert got.wait(10)
        first.join(10)
        second.join(10)
    finally:
        release.set()
        runtime.close()


# --------------------------------------------------------------------------- the store


def test_store_reads_only_the_customers_live_refunds(rt) -> None:
    history = RefundHistory(rt.db)
    done, _ = _run(rt, "Please refund $10.00 on order O-5002, a part is missing.")
    waiting, _ = _run(rt, "Please refund $60.00 on order O-5002, it arrived scratched.")
    _run(rt, "My order O-5001 arrived broken, I want my money back.", customer="C-1001")
    rows = history.recent("acme", "C-1002", NOW - timedelta(days=30))
    assert sorted((r["state"], r["amount_cents"]) for r in rows) == [("executed", 1000), ("pending", 6000)]
    assert history.recent("acme", "C-1002", NOW - timedelta(days=30), exclude_thread=waiting["thread_id"]) == [
        r for r in rows if r["state"] == "executed"]
    assert history.recent("other-tenant", "C-1002", NOW - timedelta(days=30)) == []
    # a hold counts only while its thread waits on that very plan
    rt.threads.record(waiting["thread_id"], tenant="acme", status="running", plan_hash=waiting["__interrupt__"][0].value["plan_hash"])
    assert [r["state"] for r in history.recent("acme", "C-1002", NOW - timedelta(days=30))] == ["executed"]
    assert done["status"] == "completed"
