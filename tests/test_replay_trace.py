"""``keel replay-trace``: recorded runs replayed under a candidate configuration, with no
model call and no side effect, report where the candidate decides otherwise."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.main import main
from engine.candidates import CandidateError, candidate_context, candidate_versions, load_candidate
from engine.recordings import Recording, erase_customer_recordings, erase_thread_recordings
from engine.replay_trace import ReplayError, replay_run, replay_since
from engine.runtime import Runtime
from keel.config import Settings, get_settings
from tools.fixtures import parse_fixtures_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
SHIPPED_PACK = ROOT / "guards" / "policies" / "support-v1.toml"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class NoModel:
    """A gateway that fails the test if anything asks it."""

    calls = 0

    def _fail(self, *args, **kwargs):
        NoModel.calls += 1
        raise AssertionError("a replay called the model")

    triage = extract = plan = _fail


def _world(rt: Runtime, tenant: str) -> dict[str, dict]:
    raw = json.loads((DEMO / "fixtures.json").read_text())
    raw["tenant"] = tenant
    rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(raw)).fixtures)
    return {t["id"]: {**t, "tenant": tenant} for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request, tmp_path):
    """A runtime on either store, a fresh tenant with the demo back office, and its tickets."""
    url, tenant = None, "acme"
    if request.param == "postgres":
        url, tenant = request.getfixturevalue("pg_url"), "rt" + uuid.uuid4().hex[:10]
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path / "data", now=NOW, plan_signing_key="test-key"))
    tickets = _world(rt, tenant)
    yield rt, tenant, tickets
    rt.close()


@pytest.fixture()
def sqlite_world(tmp_path):
    rt = Runtime(Settings(data_dir=tmp_path / "data", now=NOW, plan_signing_key="test-key"))
    tickets = _world(rt, "acme")
    yield rt, "acme", tickets
    rt.close()


def run(rt: Runtime, ticket: dict) -> tuple[str, dict]:
    thread = "t-" + uuid.uuid4().hex[:10]
    cfg = {"configurable": {"thread_id": thread, "requester": "req"}}
    return thread, rt.graph().invoke({"ticket": ticket}, cfg, context=rt.context())


def pack_with(tmp_path: Path, name: str, **values: int) -> Path:
    """The shipped pack with some ``key = N`` lines changed (each must exist exactly once)."""
    text = SHIPPED_PACK.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key} = \d+", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def stricter(tmp_path: Path) -> Path:
    """A candidate file naming a pack that executes refunds only up to $40 (the shipped: $50)."""
    pack_with(tmp_path, "strict-pack", auto_max_cents=4000)
    cand = tmp_path / "strict.toml"
    cand.write_text('name = "strict-refunds"\npolicy = "strict-pack.toml"\n')
    return cand


def side_effects(rt: Runtime, tenant: str) -> dict[str, int]:
    rt.recordings.flush()  # the live run's rows are written in the background: count them all
    counts = {t: rt.backoffice.count_rows(t, tenant) for t in ("refunds", "tool_ledger")}
    with rt.db.transaction() as tx:
        for table in ("audit_log", "run_index", "refund_holds"):
            counts[table] = tx.fetchone(f"SELECT COUNT(*) AS n FROM {table} WHERE tenant = ?", (tenant,))["n"]
        counts["run_recordings"] = tx.fetchone("SELECT COUNT(*) AS n FROM run_recordings", ())["n"]
    return counts


def no_live_calls(rt: Runtime, monkeypatch) -> list[str]:
    """Install a gateway that fails if asked and count the real tool runner's calls."""
    tool_calls: list[str] = []
    real_call = rt.tools.call
    monkeypatch.setattr(rt.tools, "call", lambda name, args, ctx: tool_calls.append(name) or real_call(name, args, ctx))
    rt.gateway = NoModel()
    NoModel.calls = 0
    return tool_calls


# ------------------------------------------------------------------ recording
def test_a_live_run_records_answers_results_reads_and_clock(sqlite_world):
    rt, tenant, tickets = sqlite_world
    thread, state = run(rt, tickets["T-1"])
    assert state["status"] == "completed"
    rows = rt.recordings.thread(thread)
    kinds = [(r.kind, r.name) for r in rows]
    for expected in [("model", "triage"), ("model", "extract"), ("model", "plan"), ("tool", "get_customer"),
                     ("tool", "issue_refund"), ("read", "list_orders"), ("read", "get_order"),
                     ("refunds", "recent"), ("clock", "clock")]:
        assert expected in kinds, expected
    assert [r.seq for r in rows] == sorted(r.seq for r in rows) and {r.tenant for r in rows} == {tenant}
    assert {r.customer_id for r in rows} == {"C-1001"}
    plan = next(r for r in rows if r.kind == "model" and r.name == "plan")
    assert plan.meta["provider"] == "local" and plan.meta["degraded"] is False
    assert plan.output["actions"][0]["args"] == {"order_id": "O-5001", "amount_cents": 4599}
    refund = next(r for r in rows if r.name == "issue_refund")
    assert refund.input["args"] == {"order_id": "O-5001", "amount_cents": 4599} and refund.output["ok"] is True
    other, _ = run(rt, tickets["T-4"])  # another customer's
    assert erase_thread_recordings(rt.db, thread) == len(rows)
    assert rt.recordings.thread(thread) == [] and rt.recordings.thread(other)
    assert erase_customer_recordings(rt.db, tenant, "C-1011") > 0 and rt.recordings.thread(other) == []
    with pytest.raises(ReplayError, match="no recorded run"):
        replay_run(rt, thread, load_candidate(SHIPPED_PACK))


# ------------------------------------------------------------------ the done-when
def test_stricter_refund_limit_reports_changed_verdict_without_side_effect(world, tmp_path, monkeypatch):
    rt, tenant, tickets = world
    thread, state = run(rt, tickets["T-1"])
    assert state["status"] == "completed" and state["actions"][0]["state"] == "executed"
    before = side_effects(rt, tenant)
    order_before = rt.backoffice.get_order(tenant, "O-5001")
    tool_calls = no_live_calls(rt, monkeypatch)

    result = replay_run(rt, thread, load_candidate(stricter(tmp_path)))

    assert result.changed and not result.diverged and result.candidate == "strict-refunds"
    verdicts = [d for d in result.differences if d.kind == "verdict"]
    assert [(d.subject, d.original, d.candidate) for d in verdicts] == [("action 0 issue_refund", "execute", "approve")]
    assert ("outcome", "completed", "awaiting_approval") in [(d.kind, d.original, d.candidate) for d in result.differences]
    assert result.original.policy_overall == "execute" and result.replayed.policy_overall == "approve"
    assert result.dry_run == () and result.notes == ()
    assert side_effects(rt, tenant) == before
    assert rt.backoffice.get_order(tenant, "O-5001") == order_before
    assert tool_calls == [] and NoModel.calls == 0


def test_replay_under_the_shipped_config_finds_no_difference(sqlite_world, monkeypatch):
    rt, tenant, tickets = sqlite_world
    threads = {tid: run(rt, tickets[tid]) for tid in ("T-1", "T-8", "T-2", "T-4", "T-5")}
    statuses = {tid: s["status"] for tid, (_, s) in threads.items()}
    assert {"completed", "awaiting_approval", "escalated"} <= set(statuses.values()), statuses
    before = side_effects(rt, tenant)
    tool_calls = no_live_calls(rt, monkeypatch)
    shipped = load_candidate(SHIPPED_PACK)
    for tid, (thread, state) in threads.items():
        result = replay_run(rt, thread, shipped)
        assert not result.changed and result.differences == (), (tid, result.differences)
        assert result.replayed.route == state["route"] and result.notes == (), (tid, result.notes)
    assert side_effects(rt, tenant) == before and tool_calls == [] and NoModel.calls == 0


def test_a_question_the_original_never_asked_diverges_instead_of_calling_a_model(sqlite_world, tmp_path, monkeypatch):
    rt, tenant, tickets = sqlite_world
    thread, _ = run(rt, tickets["T-1"])
    text = SHIPPED_PACK.read_text().replace('"list_payments", ', "")  # billing's planner sees another allowlist
    assert text != SHIPPED_PACK.read_text()
    (tmp_path / "narrow.toml").write_text(text)
    no_live_calls(rt, monkeypatch)
    result = replay_run(rt, thread, load_candidate(tmp_path / "narrow.toml"))
    assert result.diverged and result.changed
    assert [(d.kind, d.subject) for d in result.differences] == [("diverged", "model plan")]
    assert "no recorded answer" in result.differences[0].candidate and NoModel.calls == 0


def test_a_side_effect_the_original_did_not_make_is_only_previewed(sqlite_world, tmp_path, monkeypatch):
    rt, tenant, tickets = sqlite_world
    thread, state = run(rt, tickets["T-8"])  # $89.99: waits for approval under the shipped pack
    assert state["status"] == "awaiting_approval"
    loose = pack_with(tmp_path, "loose", auto_max_cents=10000, max_auto_cents=10000)
    before = side_effects(rt, tenant)
    order_before = rt.backoffice.get_order(tenant, "O-5002")
    tool_calls = no_live_calls(rt, monkeypatch)
    result = replay_run(rt, thread, load_candidate(loose))
    assert ("verdict", "action 0 issue_refund", "approve", "execute") in [
        (d.kind, d.subject, d.original, d.candidate) for d in result.differences]
    assert result.replayed.outcome == "completed (dry run)" and len(result.dry_run) == 1
    assert "issue_refund" in result.dry_run[0]
    assert side_effects(rt, tenant) == before and rt.backoffice.get_order(tenant, "O-5002") == order_before
    assert tool_calls == [] and NoModel.calls == 0


def test_replay_since_summarises_many_runs(sqlite_world, tmp_path, monkeypatch):
    rt, tenant, tickets = sqlite_world
    start = datetime.now(UTC) - timedelta(seconds=1)
    for tid in ("T-1", "T-8", "T-4", "T-5"):
        run(rt, tickets[tid])
    rt.recordings.add(Recording(tenant=tenant, thread_id="ghost", run_id="r", part="p", seq=0, kind="clock",
                                name="clock", input_digest="x", input=None, output=NOW.isoformat(), meta={},
                                at=datetime.now(UTC).isoformat()))  # recorded, but no checkpoint: cannot replay
    no_live_calls(rt, monkeypatch)
    summary = replay_since(rt, start, load_candidate(stricter(tmp_path)), tenant=tenant)
    assert (summary.total, summary.changed, summary.same, summary.failed, summary.diverged) == (5, 1, 3, 1, 0)
    assert summary.by_kind == {"outcome": 1, "verdict": 1}
    assert summary.failures[0][0] == "ghost" and "no checkpointed support run" in summary.failures[0][1]
    assert replay_since(rt, datetime.now(UTC) + timedelta(hours=1), load_candidate(SHIPPED_PACK)).total == 0
    assert replay_since(rt, start, load_candidate(SHIPPED_PACK), tenant="nobody").total == 0


# ------------------------------------------------------------------ candidates
def test_candidate_files_and_their_errors(sqlite_world, tmp_path):
    rt, _, _ = sqlite_world
    cand = load_candidate(stricter(tmp_path))
    assert cand.policy_file == (tmp_path / "strict-pack.toml").resolve() and cand.routing_file is None
    ctx = candidate_context(rt, cand)
    assert ctx.policy.refund.auto_max_cents == 4000 and rt.policy.refund.auto_max_cents == 5000
    versions = candidate_versions(cand)
    assert versions["candidate"]["version"] == "strict-refunds"
    assert versions["policy_pack"]["sha256"] != rt.policy.sha256
    assert load_candidate(SHIPPED_PACK).name == "support-v1"
    bad = {
        "missing.toml": None,
        "garbage.toml": "name = ",
        "unknown.toml": 'name = "x"\nfoo = "bar"\n',
        "empty.toml": 'name = "x"\n',
        "nopack.toml": 'policy = "nowhere.toml"\n',
        "badpack.toml": "version = 3\n[router]\nmin_confidence = 2\n",
    }
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(CandidateError) as err:
            load_candidate(tmp_path / name)
        assert name in str(err.value)


# ------------------------------------------------------------------ the command
@pytest.fixture()
def cli_env(tmp_path, monkeypatch):
    """A data dir with two recorded runs, and the KEEL_* settings the CLI reads."""
    data = tmp_path / "data"
    rt = Runtime(Settings(data_dir=data, now=NOW, plan_signing_key="test-key"))
    tickets = _world(rt, "acme")
    threads = [run(rt, tickets[t])[0] for t in ("T-1", "T-4")]
    rt.close()
    for key, value in {"KEEL_DATA_DIR": str(data), "KEEL_NOW": NOW.isoformat(), "KEEL_PLAN_SIGNING_KEY": "test-key"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield threads
    get_settings.cache_clear()


def test_cli_prints_the_diff_and_the_summary(cli_env, tmp_path, capsys):
    refund_thread, _ = cli_env
    cand = str(stricter(tmp_path))
    assert main(["replay-trace", refund_thread, "--config", cand]) == 0
    out = capsys.readouterr().out
    assert "CHANGED" in out and re.search(r"verdict\s+action 0 issue_refund\s+execute\s+approve", out), out
    assert main(["replay-trace", refund_thread, "--config", str(SHIPPED_PACK), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["changed"] is False and payload["differences"] == []
    assert main(["replay-trace", "--since", "2026-11-01", "--config", cand]) == 0
    out = capsys.readouterr().out
    assert "2 runs since 2026-11-01" in out and "1 changed" in out and "1 same" in out, out
    assert main(["replay-trace", "--since", "2026-11-01", "--config", cand, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["by_kind"] == {"outcome": 1, "verdict": 1}


@pytest.mark.parametrize("argv, message", [
    (["no-such-thread"], "no recorded run"),
    (["--since", "last tuesday"], "not an ISO-8601"),
    ([], "give a THREAD or --since"),
])
def test_cli_refuses_bad_input_with_one_line(cli_env, tmp_path, capsys, argv, message):
    assert main(["replay-trace", *argv, "--config", str(SHIPPED_PACK)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_refuses_a_bad_candidate_file(cli_env, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('name = "x"\npolicy = "missing.toml"\n')
    for path in (tmp_path / "bad.toml", tmp_path / "absent.toml"):
        assert main(["replay-trace", cli_env[0], "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot read" in err


def test_a_candidate_routing_is_replayed_only_where_it_picks_the_recorded_model(sqlite_world, tmp_path, monkeypatch):
    rt, tenant, tickets = sqlite_world
    thread, _ = run(rt, tickets["T-1"])  # answered by the local rules (no routing file set)
    (tmp_path / "local.toml").write_text(
        'version = "all-local"\n[models.local]\nprovider = "local"\n'
        '[[rules]]\nname = "all"\ntasks = ["route", "extract", "plan", "answer"]\nchain = ["local"]\n')
    (tmp_path / "same.toml").write_text('name = "same-models"\nrouting = "local.toml"\n')
    (tmp_path / "remote.toml").write_text(f'name = "remote-models"\nrouting = "{ROOT / "gateway" / "routing.toml"}"\n')
    no_live_calls(rt, monkeypatch)
    same = replay_run(rt, thread, load_candidate(tmp_path / "same.toml"))
    assert not same.changed and candidate_versions(load_candidate(tmp_path / "same.toml"))["model_routing"]["version"] == "all-local"
    remote = replay_run(rt, thread, load_candidate(tmp_path / "remote.toml"))
    assert remote.diverged and [(d.kind, d.subject) for d in remote.differences] == [("diverged", "model triage")]
    assert "from model small" in remote.differences[0].candidate and NoModel.calls == 0


def test_an_approved_run_replays_per_run_and_reuses_the_side_effect_it_made(sqlite_world, tmp_path, monkeypatch):
    from langgraph.types import Command

    rt, tenant, tickets = sqlite_world
    rt.principals.upsert(tenant, "boss", "approver")
    thread = "t-approved"
    start = {"configurable": {"thread_id": thread, "requester": "req"}, "metadata": {"run_id": "run-start"}}
    state = rt.graph().invoke({"ticket": tickets["T-8"]}, start, context=rt.context())
    (intr,) = state["__interrupt__"]
    value = {"decision": "approve", "plan_hash": intr.value["plan_hash"], "reviewer": "boss", "reason": "ok"}
    resume = {"configurable": {"thread_id": thread}, "metadata": {"run_id": "run-resume"}}
    assert rt.graph().invoke(Command(resume=value), resume, context=rt.context())["status"] == "completed"
    assert {r.run_id for r in rt.recordings.thread(thread)} == {"run-start", "run-resume"}
    before = side_effects(rt, tenant)
    tool_calls = no_live_calls(rt, monkeypatch)
    shipped = load_candidate(SHIPPED_PACK)
    for run_id in (None, "run-start", "run-resume"):
        result = replay_run(rt, thread, shipped, run_id=run_id)
        assert not result.changed and result.original.outcome == "awaiting_approval", (run_id, result.differences)
    with pytest.raises(ReplayError, match="no recorded run nope"):
        replay_run(rt, thread, shipped, run_id="nope")
    loose = replay_run(rt, thread, load_candidate(pack_with(tmp_path, "loose", auto_max_cents=10000, max_auto_cents=10000)),
                       run_id="run-resume")
    assert [(d.kind, d.original, d.candidate) for d in loose.differences] == [
        ("verdict", "approve", "execute"), ("outcome", "awaiting_approval", "completed")]
    assert loose.dry_run == () and loose.replayed.status == "completed"  # the recorded refund, verified on recorded reads
    assert side_effects(rt, tenant) == before and tool_calls == [] and NoModel.calls == 0


def test_a_model_failure_is_recorded_and_replayed_as_a_failure(sqlite_world, monkeypatch):
    rt, tenant, tickets = sqlite_world

    class Down:
        def triage(self, *args, **kwargs):
            raise ConnectionError("model endpoint down")

    rt.gateway = Down()
    thread, state = run(rt, tickets["T-1"])
    assert state["status"] == "escalated" and state["reason_codes"] == ["model_unavailable"]
    (row,) = [r for r in rt.recordings.thread(thread) if r.kind == "model"]
    assert row.output == {"error": "ConnectionError"}
    no_live_calls(rt, monkeypatch)
    result = replay_run(rt, thread, load_candidate(SHIPPED_PACK))
    assert not result.changed and result.replayed.escalation_reasons == ("model_unavailable",) and NoModel.calls == 0
