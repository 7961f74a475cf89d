"""Who may approve, whether the requester may, and which edits are allowed come from the
policy pack in force (``[approvals]``), on every path: the graph's approval node, the
authenticated resume check the CLI and the API share, the HTTP endpoints (approvals and
the LangGraph ``command.resume`` route), the approvals listing and the ``keel`` CLI.

Each test writes a pack that differs from the shipped one only in ``[approvals]`` and
shows the path follows it; the shipped pack (``approver_roles = ["approver"]``) no longer
lets an admin approve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone, UTC
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Command
from support.api_fixtures import api_pg_url  # noqa: F401
from support.api_helpers import demo_tickets, load_demo, new_tenant
from support.review_helpers import keel_cli

from guards.pack import DEFAULT_POLICY_PATH, load_policy
from engine.approvals import pending_approval, validate_resume
from guards.approvals import ApprovalError
from keel.config import Settings
from engine.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TICKETS = demo_tickets("acme")
TICKETS["T-PART"] = {**TICKETS["T-8"], "id": "T-PART", "subject": "Partial refund",
                     "body": "Please refund $60 on my order O-5002, the lid was cracked when it arrived."}
"""The demo tickets, plus a 6,000-cent refund (approve tier) on an order of 8,999: room
for an upward edit."""
SHIPPED = load_policy().approvals


def write_pack(path: Path, **approvals: Any) -> Path:
    """The shipped pack with some ``[approvals]`` lines changed (TOML values as JSON)."""
    lines = DEFAULT_POLICY_PATH.read_text().splitlines()
    for key, value in approvals.items():
        (i,) = [n for n, line in enumerate(lines) if line.startswith(f"{key} =")]
        lines[i] = f"{key} = {json.dumps(value)}"
    path.write_text("\n".join(lines) + "\n")
    assert load_policy(path).approvals.model_dump(mode="json") == {**SHIPPED.model_dump(mode="json"), **approvals}
    return path


# -- the graph and the shared authenticated check (embedded store) ---------------------------------
@contextmanager
def runtime(tmp: Path, pack: Path | None = None) -> Iterator[Runtime]:
    """An embedded runtime under ``pack`` (None: the shipped pack), with acme's demo
    records and a requester ``req``, an approver ``boss`` and an admin ``adm``. Plans are
    signed with the data directory's key, so ``keel`` subprocesses on it can run them."""
    rt = Runtime(Settings(data_dir=tmp, now=NOW, policy_file=pack))
    rt.ensure_fixtures()
    for user, role in (("req", "requester"), ("boss", "approver"), ("adm", "admin")):
        rt.principals.upsert("acme", user, role)
    try:
        yield rt
    finally:
        rt.close()


def pause(rt: Runtime, thread: str, ticket: str = "T-8", requester: str = "req") -> tuple[dict, dict]:
    """Run ``ticket`` until it waits for approval; returns (interrupt value, config)."""
    cfg = {"configurable": {"thread_id": thread, "requester": requester}}
    state = rt.graph().invoke({"ticket": TICKETS[ticket]}, cfg, context=rt.context())
    assert state["status"] == "awaiting_approval", state
    return state["__interrupt__"][0].value, cfg


def refunded(rt: Runtime, order: str = "O-5002") -> int:
    return rt.backoffice.get_order("acme", order)["refunded_cents"]


def resume(rt: Runtime, cfg: dict, req: dict, reviewer: str, **extra: Any) -> dict:
    value = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": reviewer, "reason": "ok", **extra}
    return rt.graph().invoke(Command(resume=value), cfg, context=rt.context())


def test_shipped_pack_lets_no_admin_approve_on_the_graph_or_the_shared_check(tmp_path):
    """The reported defect: an admin approved a refund the pack reserves for approvers."""
    assert list(SHIPPED.approver_roles) == ["approver"]
    with runtime(tmp_path) as rt:
        req, cfg = pause(rt, "t-admin")
        adm = rt.principals.get("acme", "adm")
        for decision in ("approve", "reject"):
            with pytest.raises(ApprovalError) as e:
                validate_resume(rt, "t-admin", adm, {"decision": decision, "plan_hash": req["plan_hash"]})
            assert (e.value.code, e.value.http_status) == ("not_an_approver", 403)
            assert "'admin'" in e.value.message and "approver" in e.value.message
        # straight to the graph (langgraph dev, Studio): refused, and the thread keeps waiting
        again = resume(rt, cfg, req, "adm")
        assert again["status"] == "awaiting_approval"
        assert again["__interrupt__"][0].value["error"]["code"] == "not_an_approver"
        assert refunded(rt) == 0 and pending_approval(rt, "t-admin") is not None
        # an approver still decides
        assert resume(rt, cfg, req, "boss")["status"] == "completed" and refunded(rt) == 8999


@pytest.mark.parametrize(("roles", "allowed"), [
    (["approver"], {"boss"}),
    (["admin"], {"adm"}),
    (["approver", "admin"], {"boss", "adm"}),
])
def test_graph_and_shared_check_follow_approver_roles(tmp_path, roles, allowed):
    with runtime(tmp_path / "data", write_pack(tmp_path / "pack.toml", approver_roles=roles)) as rt:
        for i, user in enumerate(("boss", "adm", "req")):
            req, cfg = pause(rt, f"t-{user}", ticket=("T-8", "T-23", "T-14")[i])
            principal = rt.principals.get("acme", user)
            value = {"decision": "reject", "plan_hash": req["plan_hash"]}
            if user in allowed:
                assert validate_resume(rt, f"t-{user}", principal, value)["reviewer"] == user
                assert resume(rt, cfg, req, user, decision="reject")["status"] == "rejected"
            else:
                with pytest.raises(ApprovalError, match="not approve or reject") as e:
                    validate_resume(rt, f"t-{user}", principal, value)
                assert e.value.code == "not_an_approver"
                out = resume(rt, cfg, req, user, decision="reject")
                assert out["status"] == "awaiting_approval"
                assert out["__interrupt__"][0].value["error"]["code"] == "not_an_approver"


@pytest.mark.parametrize("separate", [True, False])
def test_separation_of_duties_follows_the_pack(tmp_path, separate):
    """``boss`` (an approver) started the run: they may decide it only when the pack
    does not separate duties."""
    with runtime(tmp_path / "data", write_pack(tmp_path / "pack.toml", separation_of_duties=separate)) as rt:
        req, cfg = pause(rt, "t-own", requester="boss")
        boss = rt.principals.get("acme", "boss")
        value = {"decision": "approve", "plan_hash": req["plan_hash"]}
        if separate:
            with pytest.raises(ApprovalError) as e:
                validate_resume(rt, "t-own", boss, value)
            assert e.value.code == "separation_of_duties"
            out = resume(rt, cfg, req, "boss")
            assert out["status"] == "awaiting_approval" and refunded(rt) == 0
            assert out["__interrupt__"][0].value["error"]["code"] == "separation_of_duties"
        else:
            assert validate_resume(rt, "t-own", boss, value)["reviewer"] == "boss"
            out = resume(rt, cfg, req, "boss")
            assert out["status"] == "completed" and out["approval"]["reviewer"] == "boss" and refunded(rt) == 8999


@pytest.mark.parametrize("downward_only", [True, False])
def test_upward_edits_follow_the_pack_and_are_validated_again(tmp_path, downward_only):
    """An upward edit is refused while the pack says ``edits_only_downward``; otherwise it is
    allowed, and the edited plan still goes through the policy: within what is refundable
    the larger refund executes, beyond it the run escalates."""
    pack = write_pack(tmp_path / "pack.toml", edits_only_downward=downward_only)
    with runtime(tmp_path / "data", pack) as rt:
        req, cfg = pause(rt, "t-up", ticket="T-PART")
        assert req["plan"][0]["args"]["amount_cents"] == 6000
        out = resume(rt, cfg, req, "boss", edits=[{"index": 0, "args": {"amount_cents": 9999}}])  # > 8,999
        if downward_only:
            assert out["status"] == "awaiting_approval"
            assert out["__interrupt__"][0].value["error"]["code"] == "edit_raises_amount"
            assert refunded(rt) == 0
            return
        assert out["status"] == "escalated" and "amount_exceeds_refundable" in out["reason_codes"]
        assert refunded(rt) == 0

        req, cfg = pause(rt, "t-up2", ticket="T-PART")
        out = resume(rt, cfg, req, "boss", edits=[{"index": 0, "args": {"amount_cents": 8000}}])
        assert out["status"] == "completed", out.get("reason_codes")
        assert out["actions"][0]["args"]["amount_cents"] == 8000 and refunded(rt) == 8000


# -- the HTTP API (real Postgres) -------------------------------------------------------------------
@contextmanager
def served(api_pg_url: str, tmp: Path, pack: Path | None = None) -> Iterator[tuple[Any, Runtime]]:
    """keel's API with an embedded worker under ``pack`` (None: the shipped pack). One at a
    time: a worker claims any queued run of the database."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    rt = Runtime(Settings(database_url=api_pg_url, data_dir=tmp, now=NOW, plan_signing_key="api-test-key",
                          policy_file=pack))
    app = create_app(rt, embedded_worker=True, worker_concurrency=2, worker_kwargs={"poll_s": 0.05})
    try:
        with TestClient(app) as client:
            yield client, rt
    finally:
        rt.close()


class Tenant:
    """A fresh tenant with the demo records and a key per role (``dual`` is one user holding
    a requester key and an approver key)."""

    def __init__(self, rt: Runtime) -> None:
        self.name = new_tenant()
        load_demo(rt, self.name)
        key = rt.principals.create_key
        self.h = {role: {"x-api-key": key(self.name, f"{role}-user", role)} for role in ("requester", "approver", "admin")}
        self.h["dual-requester"] = {"x-api-key": key(self.name, "dual", "requester")}
        self.h["dual-approver"] = {"x-api-key": key(self.name, "dual", "approver")}
        self.tickets = demo_tickets(self.name)

    def pause(self, client: Any, ticket: str = "T-8", as_: str = "requester") -> tuple[str, str]:
        r = client.post("/tickets", json={"ticket": self.tickets[ticket], "wait": True}, headers=self.h[as_])
        assert r.status_code == 201, r.text
        out = r.json()
        return out["thread_id"], out["result"]["__interrupt__"][0]["value"]["plan_hash"]


def _still_waiting(client: Any, t: Tenant, tid: str) -> None:
    assert client.get(f"/threads/{tid}", headers=t.h["requester"]).json()["status"] == "interrupted"
    assert client.get(f"/approvals/{tid}", headers=t.h["approver"]).status_code == 200


@pytest.mark.postgres
def test_api_shipped_pack_refuses_admin_on_every_decision_path(api_pg_url, tmp_path):
    with served(api_pg_url, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = t.pause(client)
        resume_cmd = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": plan_hash}}}
        for path, body in ((f"/approvals/{tid}/approve", {"plan_hash": plan_hash}),
                           (f"/approvals/{tid}/reject", {"plan_hash": plan_hash, "reason": "no"}),
                           (f"/approvals/{tid}/edit", {"plan_hash": plan_hash,
                                                       "edits": [{"index": 0, "args": {"amount_cents": 100}}]}),
                           (f"/threads/{tid}/runs/wait", resume_cmd),
                           (f"/threads/{tid}/runs", resume_cmd)):
            r = client.post(path, json=body, headers=t.h["admin"])
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert r.json()["code"] == "not_an_approver" and "approver" in r.json()["detail"], r.text
        _still_waiting(client, t, tid)
        assert rt.backoffice.get_order(t.name, "O-5002")["refunded_cents"] == 0

        # the listing says, per caller, who may decide (and why not), by the same rules
        def listed(role: str) -> dict:
            page = client.get("/approvals?limit=200", headers=t.h[role]).json()
            assert page["rules"] == {"approver_roles": ["approver"], "separation_of_duties": True,
                                     "edits_only_downward": True, "deadline_minutes": 240,
                                     "assignee_group": "support-approvers", "on_deadline": "escalate"}
            return next(i for i in page["items"] if i["thread_id"] == tid)

        assert listed("approver")["can_decide"] is True and listed("approver")["refusal"] is None
        assert listed("admin")["can_decide"] is False and listed("admin")["refusal"]["code"] == "not_an_approver"
        assert listed("requester")["refusal"]["code"] == "not_an_approver"
        detail = client.get(f"/approvals/{tid}", headers=t.h["admin"]).json()
        assert detail["can_decide"] is False and detail["refusal"]["code"] == "not_an_approver"

        r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash}, headers=t.h["approver"])
        assert r.status_code == 200 and r.json()["result"]["status"] == "completed", r.text
        # admin powers the pack does not govern are untouched
        assert client.get("/dead-letters", headers=t.h["admin"]).status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("roles", [["admin"], ["approver", "admin"]])
def test_api_follows_the_packs_approver_roles(api_pg_url, tmp_path, roles):
    pack = write_pack(tmp_path / "pack.toml", approver_roles=roles)
    with served(api_pg_url, tmp_path / "data", pack) as (client, rt):
        t = Tenant(rt)
        by_admin = t.pause(client, "T-8")
        by_approver = t.pause(client, "T-23")
        page = client.get("/approvals?limit=200", headers=t.h["admin"]).json()
        assert page["rules"]["approver_roles"] == roles
        assert {i["thread_id"]: i["can_decide"] for i in page["items"]}[by_admin[0]] is True

        # the admin approves through the LangGraph command route and the refund executes
        cmd = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": by_admin[1]}}}
        r = client.post(f"/threads/{by_admin[0]}/runs/wait", json=cmd, headers=t.h["admin"])
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        assert rt.backoffice.get_order(t.name, "O-5002")["refunded_cents"] == 8999

        tid, plan_hash = by_approver
        r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash}, headers=t.h["approver"])
        if "approver" in roles:
            assert r.status_code == 200 and r.json()["result"]["status"] == "completed", r.text
        else:
            assert r.status_code == 403 and r.json()["code"] == "not_an_approver", r.text
            assert "admin" in r.json()["detail"]
            _still_waiting(client, t, tid)


@pytest.mark.postgres
@pytest.mark.parametrize("separate", [True, False])
def test_api_separation_of_duties_follows_the_pack(api_pg_url, tmp_path, separate):
    """One user holds a requester key and an approver key: with separation of duties they
    cannot decide the run they started; without it they can."""
    pack = write_pack(tmp_path / "pack.toml", separation_of_duties=separate)
    with served(api_pg_url, tmp_path / "data", pack) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = t.pause(client, as_="dual-requester")
        listed = client.get(f"/approvals/{tid}", headers=t.h["dual-approver"]).json()
        r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash}, headers=t.h["dual-approver"])
        if separate:
            assert listed["refusal"]["code"] == "separation_of_duties"
            assert r.status_code == 403 and r.json()["code"] == "separation_of_duties", r.text
            _still_waiting(client, t, tid)
        else:
            assert listed["can_decide"] is True
            assert r.status_code == 200 and r.json()["result"]["status"] == "completed", r.text


@pytest.mark.postgres
@pytest.mark.parametrize("downward_only", [True, False])
def test_api_upward_edits_follow_the_pack(api_pg_url, tmp_path, downward_only):
    pack = write_pack(tmp_path / "pack.toml", edits_only_downward=downward_only)
    with served(api_pg_url, tmp_path / "data", pack) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = t.pause(client)
        body = {"plan_hash": plan_hash, "edits": [{"index": 0, "args": {"amount_cents": 9999}}]}
        r = client.post(f"/approvals/{tid}/edit", json=body, headers=t.h["approver"])
        if downward_only:
            assert r.status_code == 422 and r.json()["code"] == "edit_raises_amount", r.text
            _still_waiting(client, t, tid)
        else:  # allowed by the pack, then re-validated: more than the order's total escalates
            assert r.status_code == 200, r.text
            result = r.json()["result"]
            assert result["status"] == "escalated" and "amount_exceeds_refundable" in result["reason_codes"]
        assert rt.backoffice.get_order(t.name, "O-5002")["refunded_cents"] == 0


# -- the keel CLI (subprocesses on an embedded data directory) ---------------------------------------
def keel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    e.update(env)
    out = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=e,
                         cwd=ROOT, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("roles", [None, ["admin"]])
def test_cli_follows_the_packs_approver_roles(tmp_path, roles, monkeypatch, capsys):
    """``keel approve`` and ``keel approvals --as`` read the pack in force
    (``KEEL_POLICY_FILE``): the shipped pack refuses the demo admin with a clear message,
    a pack naming only admins refuses the demo approver and lets the admin approve (the
    refusals in this process, the approval as a subprocess)."""
    from engine.batch import run_ticket
    from keel.types import Ticket

    pack = write_pack(tmp_path / "pack.toml", approver_roles=roles) if roles else None
    data = tmp_path / "data"
    env = {"KEEL_DATA_DIR": str(data), "KEEL_NOW": NOW.isoformat()}
    if pack:
        env["KEEL_POLICY_FILE"] = str(pack)
    with runtime(data, pack) as rt:
        for user, role in (("demo-requester", "requester"), ("demo-approver", "approver"), ("demo-admin", "admin")):
            rt.principals.upsert("acme", user, role)
        row = run_ticket(rt, Ticket.model_validate(TICKETS["T-8"]), requester="demo-requester")
    assert row["status"] == "awaiting_approval"
    thread = row["thread_id"]
    refused_user, decider = ("demo-admin", "demo-approver") if roles is None else ("demo-approver", "demo-admin")
    refused_role = refused_user.removeprefix("demo-")

    for k in [k for k in os.environ if k.startswith("KEEL_")]:
        monkeypatch.delenv(k)
    code, out, err = keel_cli(["approvals", "--json", "--as", refused_user], monkeypatch, env, capsys)
    assert code == 0 and "Traceback" not in err, err
    listing = json.loads(out)
    assert [(i["thread_id"], i["can_decide"], i["refusal"]) for i in listing] == [(thread, False, "not_an_approver")]
    code, text, err = keel_cli(["approvals", "--as", decider], monkeypatch, env, capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"decided by role {' or '.join(roles or ['approver'])}" in text and f"{decider} may decide" in text

    code, _, err = keel_cli(["approve", thread, "--as", refused_user], monkeypatch, env, capsys)
    assert code == 2 and "refused (not_an_approver)" in err and "Traceback" not in err, err
    assert f"role '{refused_role}' may not approve or reject" in err
    ok = keel("approve", thread, "--as", decider, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "completed"
