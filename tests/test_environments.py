"""Environments (issue #13, part 6): ``KEEL_ENV`` selects per-environment allowlists and policy
overrides from the pack (``[env.<name>]``, :mod:`guards.env_policy`); in staging side-effecting
tools dry-run: the runner returns the tool's preview marked ``dry_run`` and writes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.batch import run_input
from engine.runtime import Runtime
from engine.supply import load_supply_fixtures, supply_parts
from engine.versions import run_versions
from cli.main import main as keel_main
from guards.pack import DEFAULT_POLICY_PATH, PolicyError, PolicyPack, load_policy
from keel.config import Settings, get_settings
from tools.registry import TOOLS
from tools.runner import ToolContext

DEMO = Path(__file__).resolve().parents[1] / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TICKETS = {t["id"]: t for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}
PACK = DEFAULT_POLICY_PATH.read_text()


def _runtime(tmp_path: Path, env: str, pack: str | None = None) -> Runtime:
    kw = {}
    if pack is not None:
        (tmp_path / "pack.toml").write_text(pack)
        kw["policy_file"] = tmp_path / "pack.toml"
    rt = Runtime(Settings(data_dir=tmp_path / env, now=NOW, plan_signing_key="env-test-key", env=env, **kw))
    rt.ensure_fixtures()
    rt.principals.upsert("acme", "req", "requester")
    return rt


def _run(rt: Runtime, ticket: str, thread: str = "t-1") -> dict:
    cfg = {"configurable": {"thread_id": thread, "requester": "req"}}
    return rt.graph().invoke({"ticket": TICKETS[ticket]}, cfg, context=rt.context())


def test_one_refund_ticket_executes_in_dev_and_dry_runs_in_staging(tmp_path):
    results = {}
    for env in ("dev", "staging"):
        rt = _runtime(tmp_path, env)
        try:
            state = _run(rt, "T-1")
            tool_calls = [r.data for r in rt.audit.list("acme", "t-1") if r.kind == "tool_call"]
            results[env] = (state, tool_calls, rt.backoffice.get_order("acme", "O-5001")["refunded_cents"],
                            rt.backoffice.count_rows("refunds", "acme"), rt.backoffice.count_rows("tool_ledger", "acme"))
        finally:
            rt.close()

    dev, dev_calls, dev_refunded, dev_refunds, dev_ledger = results["dev"]
    assert dev["status"] == "completed" and dev["actions"][0]["state"] == "executed"
    assert dev_refunded == 4599 and dev_refunds == 1 and dev_ledger == 1
    assert "dry_run" not in dev["results"][0] and "dry_run" not in dev_calls[0]

    stg, stg_calls, stg_refunded, stg_refunds, stg_ledger = results["staging"]
    assert stg["status"] == "completed"
    assert stg["actions"][0]["decision"] == "execute"
    assert stg["actions"][0]["state"] == "executed"  # the batch contract's states are fixed; dry_run is below
    assert stg_refunded == 0 and stg_refunds == 0 and stg_ledger == 0  # no back-office write at all
    (res,) = stg["results"]
    assert res["dry_run"] is True and res["output"]["dry_run"] is True
    order, refund = res["output"]["changes"]  # the tool's preview: what it would have changed
    assert order["kind"] == "order" and order["id"] == "O-5001"
    assert order["before"]["refunded_cents"] == 0 and order["after"]["refunded_cents"] == 4599
    assert refund["kind"] == "refund" and refund["before"] is None and refund["after"]["amount_cents"] == 4599
    assert stg_calls[0]["dry_run"] is True and stg_calls[0]["ok"] is True  # the audit says dry-run
    assert stg["verification"]["checked"] == [{"index": 0, "tool": "issue_refund", "ok": True, "dry_run": True}]


def test_reads_still_run_in_staging(tmp_path):
    rt = _runtime(tmp_path, "staging")
    try:
        assert rt.tools.dry_run_side_effects is True
        ctx = ToolContext(tenant="acme", customer_id="C-1001", user_id="u", allowlist=frozenset({"get_order", "issue_refund"}),
                          now=NOW)
        read = rt.tools.call("get_order", {"order_id": "O-5001"}, ctx)
        assert read.ok and not read.dry_run and read.output["id"] == "O-5001"
        # a side effect still needs its key, and still passes the allowlist, in a dry run
        refused = rt.tools.call("issue_refund", {"order_id": "O-5001", "amount_cents": 100}, ctx)
        assert refused.error_code == "idempotency_key_required"
        outside = rt.tools.call("cancel_order", {"order_id": "O-5001"}, ctx.model_copy(update={"idempotency_key": "k"}))
        assert outside.error_code == "tool_not_allowed"
    finally:
        rt.close()


ENV_PACK = PACK + """
[env.staging]
dry_run_side_effects = false   # this deployment's staging has its own sandbox back office

[env.prod]
deny_tools = ["unlock_account"]

[env.prod.overrides.refund]
auto_max_cents = 2500
"""


def test_pack_sections_override_per_environment(tmp_path):
    seen = {}
    for env in ("dev", "staging", "prod"):
        rt = _runtime(tmp_path, env, ENV_PACK)
        try:
            seen[env] = (_run(rt, "T-1"), _run(rt, "T-19", "t-19"), rt.backoffice.count_rows("refunds", "acme"),
                         rt.policy.allowlist("access"), run_versions(rt, "support", rt.graph())["environment"])
        finally:
            rt.close()
    # dev: the file as written
    assert seen["dev"][0]["status"] == "completed" and seen["dev"][2] == 1
    assert seen["dev"][1]["status"] == "completed" and "unlock_account" in seen["dev"][3]
    # staging: the pack turns the dry run off, so the refund is written
    assert seen["staging"][0]["status"] == "completed" and seen["staging"][2] == 1
    assert "dry_run" not in seen["staging"][0]["results"][0]
    # prod: a lower auto-execute limit (4599 > 2500 needs approval) and a tool removed from the allowlist
    assert seen["prod"][0]["status"] == "awaiting_approval" and seen["prod"][2] == 0
    assert "unlock_account" not in seen["prod"][3]
    assert seen["prod"][1]["status"] == "escalated"
    # KEEL_ENV is recorded in the run's versions, and each environment's section changes the digest
    assert [seen[e][4]["version"] for e in ("dev", "staging", "prod")] == ["dev", "staging", "prod"]
    assert len({seen[e][4]["sha256"] for e in seen}) == 3


@pytest.mark.parametrize("section, problem", [
    ("[env.qa]\ndry_run_side_effects = true\n", "env.qa"),
    ("[env.prod]\ndeny_tools = [\"no_such_tool\"]\n", "env.prod: no_such_tool"),
    ("[env.prod.overrides.refund]\nauto_max_cents = \"lots\"\n", "env.prod: refund.auto_max_cents"),
    ("[env.prod.overrides]\nversion = \"x\"\n", "may not override"),
    ("[env.prod]\nsurprise = 1\n", "env.prod.surprise"),
])
def test_a_bad_environment_section_is_refused_when_the_pack_loads(tmp_path, section, problem):
    path = tmp_path / "bad.toml"
    path.write_text(PACK + "\n" + section)
    with pytest.raises(PolicyError) as e:
        load_policy(path, tools=TOOLS)
    assert problem in str(e.value) and str(path) in str(e.value)


def test_keel_env_is_validated(monkeypatch):
    assert Settings().env == "dev"
    monkeypatch.setenv("KEEL_ENV", "staging")
    assert Settings().env == "staging"
    monkeypatch.setenv("KEEL_ENV", "production")
    with pytest.raises(ValidationError):
        Settings()


def test_cli_refuses_an_unknown_keel_env_with_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KEEL_ENV", "qa")
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert keel_main(["keys", "list"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "invalid settings" in err and "Traceback" not in err


def test_the_bundled_pack_is_unchanged_by_environments():
    pack = PolicyPack.from_toml(PACK)
    assert pack.env == {} and pack.for_env("prod") is pack
    assert [pack.dry_run_side_effects(e) for e in ("dev", "staging", "prod")] == [False, True, False]


def test_the_supply_workflow_dry_runs_in_staging_too(tmp_path):
    supply = Path(__file__).resolve().parents[1] / "workflows" / "supply"
    event = next(e for e in map(json.loads, (supply / "events.jsonl").read_text().splitlines()) if e["id"] == "SC-01")
    seen = {}
    for env in ("dev", "staging"):
        rt = Runtime(Settings(data_dir=tmp_path / env, now=datetime(2027, 5, 12, 15, tzinfo=UTC),
                              plan_signing_key="env-supply-key", env=env))
        try:
            load_supply_fixtures(rt, supply / "fixtures.json")
            row = run_input(rt, "supply", "SC-01", {"event": event}, requester="ops", thread_id="th")
            reroutes = [r for r in supply_parts(rt).store.all("tidewater", "reroute") if r.get("shipment_id") == "SH-5001"]
            seen[env] = (row, len(reroutes), rt.graph("supply").get_state({"configurable": {"thread_id": "th"}}).values)
        finally:
            rt.close()
    assert seen["dev"][0]["status"] == "completed" and seen["dev"][1] == 1
    assert seen["staging"][0]["status"] == "completed" and seen["staging"][1] == 0  # nothing written
    assert seen["staging"][2]["results"][0]["dry_run"] is True
