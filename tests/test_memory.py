"""Governed long-term memory (issue #12 part 7): the agent proposes, a rule accepts or rejects
by data class and never-store screen, accepted items live in LangGraph's store per (tenant,
customer) until their class's retention ends, every decision is audited without its
content, and the end-of-run step is safe to re-run. Store tests run on SQLite and Postgres."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from engine.runtime import Runtime
from guards.memory_policy import MemoryPolicy, MemoryProposal, judge, never_store_findings, proposal_digest
from guards.pack import DEFAULT_POLICY_PATH, PolicyError, PolicyPack, load_policy
from keel.config import Settings
from keel.types import Ticket
from nodes.finish import complete, escalate_to_human
from nodes.memory import memory_proposals

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = load_policy().memory


def _p(data_class: str = "preference", slot: str = "language", **value: Any) -> MemoryProposal:
    return MemoryProposal(data_class=data_class, slot=slot, value=value or {"language": "es"})


# -- the rule (pure) ------------------------------------------------------------------------------
def test_the_shipped_pack_allows_four_classes_each_with_its_retention():
    assert POLICY is not None
    assert POLICY.retention_days == {"preference": 365, "contact_channel": 365, "interaction_summary": 90,
                                     "case_fact": 30}


@pytest.mark.parametrize("data_class, days", [("preference", 365), ("contact_channel", 365),
                                              ("interaction_summary", 90), ("case_fact", 30)])
def test_an_allowed_class_is_accepted_until_its_retention_ends(data_class, days):
    v = judge(_p(data_class, note="prefers short answers"), POLICY, NOW)
    assert v.accepted and v.reasons == () and v.expires_at == NOW + timedelta(days=days)
    assert v.digest == proposal_digest(_p(data_class, note="prefers short answers"))


@pytest.mark.parametrize("data_class", ["payment_details", "credentials", "identity_document", "health"])
def test_a_class_the_pack_does_not_allow_is_rejected(data_class):
    v = judge(_p(data_class, note="anything"), POLICY, NOW)
    assert not v.accepted and v.reasons == ("class_not_allowed",) and v.expires_at is None


def test_a_pack_that_allows_fewer_classes_rejects_the_others_and_no_pack_section_keeps_nothing():
    narrow = MemoryPolicy(retention_days={"contact_channel": 7})
    assert judge(_p("contact_channel", slot="channel", channel="chat"), narrow, NOW).expires_at == NOW + timedelta(days=7)
    assert judge(_p("preference"), narrow, NOW).reasons == ("class_not_allowed",)
    assert judge(_p("preference"), None, NOW).reasons == ("memory_disabled",)


@pytest.mark.parametrize("text, reason", [
    ("my card is 4111 1111 1111 1111, charge it next time", "never_store:card_number"),
    ("Card: 5500-0000-0000-0004", "never_store:card_number"),
    ("my password is Hunter22!", "never_store:password"),
    ("password: s3cret-pass", "never_store:password"),
    ("your one-time code is 482913", "never_store:one_time_code"),
    ("OTP 123456 from the SMS", "never_store:one_time_code"),
    ("verification code: 9921", "never_store:one_time_code"),
    ("MFA secret JBSWY3DPEHPK3PXP", "never_store:mfa_secret"),
    ("otpauth://totp/Acme:ana?secret=JBSWY3DPEHPK3PXP&issuer=Acme", "never_store:mfa_secret"),
    ("backup codes: 7hx2-k9pq 3mmw-8tze", "never_store:mfa_secret"),
])
def test_the_never_store_list_is_rejected_in_any_class(text, reason):
    for data_class in ("preference", "interaction_summary"):
        v = judge(_p(data_class, note=text), POLICY, NOW)
        assert not v.accepted and reason in v.reasons, (text, v.reasons)


@pytest.mark.parametrize("value, reason", [
    ({"password": "x"}, "never_store:password"),
    ({"otp": "111111"}, "never_store:one_time_code"),
    ({"mfa_secret": "abc"}, "never_store:mfa_secret"),
    ({"api_key": "zzz"}, "never_store:secret"),
    ({"note": "reach me at ana.ruiz@example.com"}, "never_store:contact_detail"),
])
def test_a_secret_named_by_its_key_or_a_contact_detail_is_rejected(value, reason):
    assert reason in judge(_p("preference", **value), POLICY, NOW).reasons


@pytest.mark.parametrize("text", ["Refund of 4599 cents on O-5001", "Prefers chat; ticket T-11 at 2026-11-25T12:00:00Z",
                                  "asked about two-factor authentication", "route billing, reason amount_over_agent_limit"])
def test_ordinary_support_facts_pass_the_screen(text):
    assert never_store_findings({"note": text}) == ()


def test_the_pack_refuses_a_bad_memory_section():
    base = DEFAULT_POLICY_PATH.read_text()
    for bad in ("case_fact = 0", "case_fact = 5000", "payment_details = 10"):
        text = base.replace("case_fact = 30", bad)
        with pytest.raises(PolicyError, match="memory"):
            PolicyPack.from_toml(text)


def test_proposals_are_small_flat_records():
    with pytest.raises(ValueError):
        MemoryProposal(data_class="preference", slot="x", value={"nested": {"a": 1}})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        MemoryProposal(data_class="preference", slot="x", value={"big": "y" * 5000})
    with pytest.raises(ValueError):
        MemoryProposal(data_class="Preference!", slot="x", value={"a": 1})


# -- the store (SQLite and Postgres) ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path, now=NOW, plan_signing_key="test-key"))
    yield rt, "m" + uuid.uuid4().hex[:10]
    rt.close()


def _memory_rows(rt: Runtime, tenant: str, thread: str | None = None) -> list[Any]:
    return [r for r in rt.audit.list(tenant, thread) if r.kind == "memory_write"]


def test_accepted_items_are_stored_per_customer_and_every_decision_is_audited_by_digest(world):
    rt, tenant = world
    name = "Ana Ruiz-" + uuid.uuid4().hex[:6]
    good = _p("interaction_summary", slot="summary", subject=f"Refund for {name}", route="billing")
    bad = _p("preference", slot="card", note="use card 4111 1111 1111 1111")
    verdicts = rt.memory.propose(tenant, "C-1", "th-1", [good, bad])
    assert [v.accepted for v in verdicts] == [True, False]
    items = rt.memory.recall(tenant, "C-1")
    assert [(i.data_class, i.slot, i.value, i.thread_id) for i in items] == [
        ("interaction_summary", "summary", good.value, "th-1")]
    assert rt.memory.recall(tenant, "C-2") == [] and rt.memory.recall("other-" + tenant, "C-1") == []
    rows = _memory_rows(rt, tenant, "th-1")
    assert [(r.data["decision"], r.data["data_class"], r.data["digest"]) for r in rows] == [
        ("accepted", "interaction_summary", proposal_digest(good)), ("rejected", "preference", proposal_digest(bad))]
    assert rows[1].data["reasons"] == ["never_store:card_number"]
    dumped = json.dumps([r.data for r in rows])
    assert name not in dumped and "4111" not in dumped  # the audit row holds no content
    assert rt.audit.verify(tenant).ok


def test_items_expire_with_their_class_retention_and_prune_deletes_them(world):
    rt, tenant = world
    rt.memory.propose(tenant, "C-1", "th-1", [_p("case_fact", slot="open_case", state="escalated"),
                                              _p("interaction_summary", slot="summary", route="orders")], now=NOW)
    classes = lambda when: sorted(i.data_class for i in rt.memory.recall(tenant, "C-1", now=when))  # noqa: E731
    assert classes(NOW + timedelta(days=29)) == ["case_fact", "interaction_summary"]
    assert classes(NOW + timedelta(days=31)) == ["interaction_summary"]
    assert classes(NOW + timedelta(days=91)) == []
    assert rt.memory.prune(tenant, now=NOW + timedelta(days=29)) == 0
    assert rt.memory.prune(tenant, now=NOW + timedelta(days=31)) == 1
    assert classes(NOW) == ["interaction_summary"]  # pruned, not just hidden
    assert rt.memory.prune(tenant, now=NOW + timedelta(days=91)) == 1 and classes(NOW) == []
    # the store's own TTL is the wall-clock backstop: each item was written with its class's retention
    rt.memory.propose(tenant, "C-9", "th-9", [_p("case_fact", slot="open_case", state="escalated")], now=NOW)
    (raw,) = rt.store.search((tenant, "memory", "C-9"), refresh_ttl=False)
    assert raw.value["expires_at"] == "2026-12-25T12:00:00Z"


def test_reading_does_not_extend_a_retention(world):
    rt, tenant = world
    rt.memory.propose(tenant, "C-1", "th-1", [_p("case_fact", slot="open_case", state="escalated")], now=NOW)
    for day in range(0, 30, 5):
        assert rt.memory.recall(tenant, "C-1", now=NOW + timedelta(days=day))
    assert rt.memory.recall(tenant, "C-1", now=NOW + timedelta(days=30)) == []


def _finish_state(thread: str, tenant: str, **kw: Any) -> dict[str, Any]:
    ticket = Ticket(id="T-1", tenant=tenant, customer_id="C-1", channel="chat", subject="Refund please",
                    body="My order O-1 arrived broken.")
    return {"ticket": ticket, "thread_id": thread, "requester": "req", "correlation_id": "cid", "route": "billing",
            "actions": [{"tool": "issue_refund", "args": {}, "decision": "execute", "state": "executed"}], **kw}


def test_the_end_of_run_step_is_safe_to_re_run(world):
    rt, tenant = world
    ctx = SimpleNamespace(audit=rt.audit, run_index=rt.threads, memory=rt.memory)
    state = _finish_state("th-done", tenant, status="running")
    for _ in range(3):  # LangGraph re-runs a node that did not checkpoint (a crash, a resume)
        assert complete(state, runtime=SimpleNamespace(context=ctx))["status"] == "completed"
    items = rt.memory.recall(tenant, "C-1")
    assert sorted((i.data_class, i.slot) for i in items) == [("contact_channel", "channel"),
                                                              ("interaction_summary", "summary")]
    assert next(i for i in items if i.data_class == "contact_channel").value == {"channel": "chat"}
    assert len(_memory_rows(rt, tenant, "th-done")) == 2
    summary = next(i for i in items if i.data_class == "interaction_summary").value
    assert summary == {"ticket_id": "T-1", "subject": "Refund please", "route": "billing", "status": "completed",
                       "reason_codes": [], "actions": ["issue_refund:executed"]}

    esc = _finish_state("th-esc", tenant, reason_codes=["amount_over_agent_limit"])
    escalate_to_human(esc, runtime=SimpleNamespace(context=ctx))
    escalate_to_human(esc, runtime=SimpleNamespace(context=ctx))
    fact = [i for i in rt.memory.recall(tenant, "C-1") if i.data_class == "case_fact"]
    assert [f.value for f in fact] == [{"ticket_id": "T-1", "state": "escalated",
                                        "reason_codes": ["amount_over_agent_limit"]}]
    assert len(_memory_rows(rt, tenant, "th-esc")) == 3
    assert rt.audit.verify(tenant).ok


def test_a_real_run_remembers_its_customer(world):
    rt, tenant = world
    ticket = {"id": "T-12", "tenant": tenant, "customer_id": "C-1012", "channel": "email", "subject": "Returns",
              "body": "If something I buy doesn't fit, how do I send it back?"}
    raw = json.loads((DEFAULT_POLICY_PATH.parents[2] / "keel" / "demo" / "fixtures.json").read_text())
    from tools.fixtures import parse_fixtures_text

    rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps({**raw, "tenant": tenant})).fixtures)
    out = rt.graph().invoke({"ticket": ticket}, {"configurable": {"thread_id": "run-" + tenant, "requester": "req"}},
                            context=rt.context())
    assert out["status"] == "completed"
    assert sorted(i.data_class for i in rt.memory.recall(tenant, "C-1012")) == ["contact_channel",
                                                                               "interaction_summary"]
    assert "memory" not in out  # the run's output (the batch contract) is unchanged


def test_a_proposal_with_a_card_number_in_the_subject_is_rejected_and_nothing_is_stored():
    state = _finish_state("th", "acme")
    state["ticket"] = state["ticket"].model_copy(update={"subject": "charge 4111 1111 1111 1111 again"})
    proposals = memory_proposals(state, "completed")
    verdicts = {p.data_class: judge(p, POLICY, NOW) for p in proposals}
    assert verdicts["contact_channel"].accepted
    assert verdicts["interaction_summary"].reasons == ("never_store:card_number",)


def test_a_pack_without_a_memory_section_gives_runs_no_memory(tmp_path):
    text = DEFAULT_POLICY_PATH.read_text()
    pack = tmp_path / "pack.toml"
    pack.write_text(text[:text.index("[memory.retention_days]")])
    rt = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key="k", policy_file=pack))
    try:
        assert rt.policy.memory is None and rt.support_context().memory is None
    finally:
        rt.close()
    rt = Runtime(Settings(data_dir=tmp_path / "b", now=NOW, plan_signing_key="k"))
    try:
        assert rt.support_context().memory is not None
    finally:
        rt.close()
