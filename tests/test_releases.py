"""Shadow mode and canaries with auto-rollback (issue 9 part 7, :mod:`engine.releases`).

Runs go through the real worker (``Worker.run_one``: claim, the support graph, finish) on
SQLite and on Postgres; the candidate is a policy pack written next to the test.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from conftest import _own_database
from support.api_helpers import demo_tickets, load_demo, new_tenant

from engine import releases
from engine.queue import RunQueue
from engine.releases import AUDIT_TENANT, Margins, arm_of, release_store, run_ended, shadow_idle, start_release
from engine.candidates import CandidateError
from engine.runtime import Runtime
from engine.tracing import thread_trace
from engine.worker import Worker
from guards.pack import DEFAULT_POLICY_PATH
from keel.config import Settings, get_settings

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
STEADY = ("T-10", "T-15", "T-27")
"""Read-only tickets that complete under the shipped pack, run after run on one tenant
(tracking, two knowledge answers): stable's escalation, error and safety rates are 0."""


def _pack(tmp: Path, version: str, edit: dict[str, str] | None = None) -> Path:
    """The shipped pack as ``<version>.toml`` (a bare pack candidate is named after its file)
    with its version renamed and some ``key = value`` lines replaced (``{"section.key":
    "value"}``: the first line of ``key`` after ``[section]``)."""
    lines = DEFAULT_POLICY_PATH.read_text().splitlines()
    lines[[i for i, ln in enumerate(lines) if ln.startswith("version =")][0]] = f'version = "{version}"'
    for where, value in (edit or {}).items():
        section, key = where.rsplit(".", 1)
        start = lines.index(f"[{section}]")
        i = next(n for n in range(start + 1, len(lines)) if lines[n].split("=")[0].strip() == key)
        lines[i] = f"{key} = {value}"
    path = tmp / f"{version}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def releases_pg_url() -> Iterator[str]:
    """A Postgres database of this module's own: a release counts every run of its graph that
    ends, so runs other test files left queued in the session's database must not land in an arm."""
    yield from _own_database("keel_trel")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path) -> Iterator[dict[str, Any]]:
    """A runtime (SQLite in tmp, or this module's Postgres database), its queue, a worker
    and a fresh tenant with the demo back office."""
    url = request.getfixturevalue("releases_pg_url") if request.param == "postgres" else None
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path / "data", now=NOW, plan_signing_key="release-test-key"))
    q = RunQueue(rt.db).setup()
    store = release_store(rt)
    active = store.active("support")
    if active is not None:  # an earlier test's release on the shared Postgres database
        store.end("support", "stopped", actor="test")
    tenant = new_tenant()
    load_demo(rt, tenant)
    try:
        yield {"rt": rt, "q": q, "worker": Worker(rt, q, lease_s=30.0), "tenant": tenant,
               "tickets": demo_tickets(tenant), "backend": request.param, "tmp": tmp_path}
    finally:
        shadow_idle(rt, 30)
        rt.close()


def _run(env: dict[str, Any], ticket: str) -> dict[str, Any]:
    """Queue ``ticket`` on a new thread and let the real worker execute it; the finished run row."""
    q, tenant = env["q"], env["tenant"]
    th, _ = q.create_thread(tenant, "rita")
    run = q.create_run(tenant, th["thread_id"], assistant_id="support", graph_id="support", kind="input",
                       payload={"input": {"ticket": env["tickets"][ticket]}}, created_by="rita",
                       correlation_id=str(uuid.uuid4()))
    while env["worker"].run_one():
        pass
    done = q.get_run(tenant, th["thread_id"], run["run_id"])
    assert done["status"] in ("success", "error", "dead"), done
    return done


def _state(env: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    return dict(env["rt"].graph("support").get_state({"configurable": {"thread_id": run["thread_id"]}}).values)


def _release_rows(rt: Runtime, event: str, release_id: str) -> list[Any]:
    return [r for r in rt.audit.list(AUDIT_TENANT, limit=10_000)
            if r.kind == "release" and r.data.get("event") == event and r.data.get("release_id") == release_id]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- canary
BROKEN = {
    # SQLite: a pack whose router threshold nobody reaches: every ticket escalates (low_confidence)
    "sqlite": ("escalation", {"router.min_confidence": "1.0"}, STEADY, Margins()),
    # Postgres: a pack that denies shipment tracking: the safety metric (policy denials); a
    # denied plan escalates too, so the escalation margin is opened wide to see safety alone trip
    "postgres": ("safety", {"track_shipment.decision": '"deny"'}, ("T-10",), Margins(escalation=1.0)),
}


def test_a_canary_with_a_broken_policy_rolls_back_by_itself(env):
    rt, backend = env["rt"], env["backend"]
    metric, edit, tickets, margins = BROKEN[backend]
    pack = _pack(env["tmp"], "support-broken", edit)
    rel = start_release(rt, pack, mode="canary", percent=50, min_runs=4, margins=margins, actor="ops", reason="try it")
    assert rel.state == "active" and rel.files["policy_file"].sha256 and rel.candidate_name == "support-broken"
    assert _sample("keel_release_canary_share", graph="support") == 0.5

    runs: list[dict[str, Any]] = []
    for i in range(60):
        runs.append(_run(env, tickets[i % len(tickets)]))
        if release_store(rt).get(rel.release_id).state != "active":
            break
    ended = release_store(rt).get(rel.release_id)
    assert ended.state == "rolled_back", f"still {ended.state} after {len(runs)} runs"
    assert ended.ended_by == "system" and metric in ended.reason
    # only after the minimum sample in both arms
    assert ended.final["candidate"]["runs"] >= 4 and ended.final["stable"]["runs"] >= 4
    assert ended.final["candidate"][f"{metric}_rate"] == 1.0 and ended.final["stable"][f"{metric}_rate"] == 0.0

    # every run says its arm (run JSON) and ran that arm's configuration
    by_arm: dict[str, list[dict[str, Any]]] = {"candidate": [], "stable": []}
    for run in runs:
        entry = run["versions"]["release"]
        assert entry["release_id"] == rel.release_id and entry["sha256"] == rel.candidate_sha256
        by_arm[entry["arm"]].append(run)
        values = _state(env, run)
        if entry["arm"] == "candidate":
            assert run["versions"]["policy_pack"]["version"] == "support-broken"
            assert run["versions"]["candidate"]["sha256"] == rel.candidate_sha256
            if metric == "escalation":
                assert values["status"] == "escalated" and "low_confidence" in values["reason_codes"]
            else:
                assert values["policy"].overall == "deny"
        else:
            assert run["versions"]["policy_pack"]["version"] == "support-v1"
            assert values["status"] == "completed"
    assert len(by_arm["candidate"]) >= 4 and len(by_arm["stable"]) >= 4

    # one audit row with the metrics and the reason; the counter and the share
    (row,) = _release_rows(rt, "release_rolled_back", rel.release_id)
    assert row.actor == "system" and row.data["worse"] == [metric]
    assert row.data["metrics"]["candidate"]["runs"] == ended.final["candidate"]["runs"]
    assert row.data["reason"] == ended.reason
    assert _sample("keel_release_rollbacks_total", release=rel.release_id, metric=metric) == 1.0
    assert _sample("keel_release_canary_share", graph="support") == 0.0
    assert rt.audit.verify(AUDIT_TENANT).ok

    # new runs go to stable, and nothing more is counted for the release
    after = [_run(env, t) for t in tickets]
    assert all("release" not in r["versions"] and r["versions"]["policy_pack"]["version"] == "support-v1" for r in after)
    assert all(_state(env, r)["status"] == "completed" for r in after)
    assert release_store(rt).get(rel.release_id).state == "rolled_back"
    assert len(_release_rows(rt, "release_rolled_back", rel.release_id)) == 1


def test_a_good_candidate_keeps_running(env):
    rt = env["rt"]
    pack = _pack(env["tmp"], "support-v1-candidate")  # the shipped rules, renamed
    rel = start_release(rt, pack, mode="canary", percent=50, min_runs=3, actor="ops")
    store = release_store(rt)
    runs: list[dict[str, Any]] = []
    for i in range(40):  # the arm is a hash of the run id: run until both arms have the minimum
        runs.append(_run(env, STEADY[i % len(STEADY)]))
        arms = [r["versions"]["release"]["arm"] for r in runs]
        if len(runs) >= 12 and min(arms.count("candidate"), arms.count("stable")) >= 3:
            break
    status = store.status(store.get(rel.release_id))
    assert status.release.state == "active" and status.worse == []
    assert status.arms["candidate"].runs >= 3 and status.arms["stable"].runs >= 3
    assert status.arms["candidate"].runs + status.arms["stable"].runs == len(runs)
    cand = [r for r in runs if r["versions"]["release"]["arm"] == "candidate"]
    assert cand and all(r["versions"]["policy_pack"]["version"] == "support-v1-candidate" for r in cand)
    assert all(_state(env, r)["status"] == "completed" for r in runs)
    assert not _release_rows(rt, "release_rolled_back", rel.release_id)
    # the arm and the candidate are on the run's span too
    for run in (cand[0], next(r for r in runs if r["versions"]["release"]["arm"] == "stable")):
        (span,) = [n for root in thread_trace(rt, env["tenant"], run["thread_id"]) for n in _walk(root)
                   if n["name"] == "run support"]
        arm = run["versions"]["release"]["arm"]
        assert span["attributes"]["keel.release.id"] == rel.release_id
        assert span["attributes"]["keel.release.arm"] == arm
        assert span["attributes"]["keel.version.release"] == f"canary:support-v1-candidate:{arm}"
        assert span["attributes"]["keel.version.policy_pack"] == (
            "support-v1-candidate" if arm == "candidate" else "support-v1")
    store.end("support", "stopped", actor="ops")
    assert store.get(rel.release_id).state == "stopped"


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from _walk(child)


def test_candidate_runs_that_fail_count_as_errors_and_roll_the_canary_back(env, monkeypatch):
    rt = env["rt"]
    rel = start_release(rt, _pack(env["tmp"], "support-v1-candidate"), mode="canary", percent=50, min_runs=3,
                        actor="ops")

    def broken(*a: Any, **k: Any) -> Any:  # a candidate whose context cannot be built: its runs fail
        raise CandidateError("candidate context exploded")

    monkeypatch.setattr(releases, "candidate_context", broken)
    runs = []
    for i in range(40):
        runs.append(_run(env, STEADY[i % len(STEADY)]))
        if release_store(rt).get(rel.release_id).state != "active":
            break
    ended = release_store(rt).get(rel.release_id)
    assert ended.state == "rolled_back" and ended.reason.startswith("error rate 1.000")
    failed = [r for r in runs if r["versions"]["release"]["arm"] == "candidate"]
    assert failed and all(r["status"] == "error" and "exploded" in r["error"] for r in failed)
    assert all(r["status"] == "success" for r in runs if r["versions"]["release"]["arm"] == "stable")
    assert ended.final["candidate"]["errors"] == len(failed) >= 3
    (row,) = _release_rows(rt, "release_rolled_back", rel.release_id)
    assert row.data["worse"] == ["error"]


def test_arm_assignment_is_stable_and_near_the_share(env):
    rt = env["rt"]
    ids = [str(uuid.uuid4()) for _ in range(20_000)]
    share = sum(arm_of("r1", i, 30.0) == "candidate" for i in ids) / len(ids)
    assert abs(share - 0.30) < 0.015
    assert [arm_of("r1", i, 30.0) for i in ids[:200]] == [arm_of("r1", i, 30.0) for i in ids[:200]]
    assert all(arm_of("r1", i, 100.0) == "candidate" for i in ids[:200])
    # recorded once: the same arm on every later attempt, and a thread keeps its arm
    pack = _pack(env["tmp"], "support-v1-candidate")
    rel = start_release(rt, pack, mode="canary", percent=50, actor="ops")
    store = release_store(rt)
    run = {"run_id": str(uuid.uuid4()), "thread_id": "th-1", "tenant": env["tenant"]}
    first = store.assign(rel, run)
    assert all(store.assign(rel, run) == first for _ in range(3))
    for _ in range(20):  # a resume run of the thread: the thread's arm, whatever its own hash
        assert store.assign(rel, {**run, "run_id": str(uuid.uuid4())}) == first


def test_only_one_rollback_under_concurrent_finishes(env):
    rt = env["rt"]
    pack = _pack(env["tmp"], "support-v1-candidate")
    rel = start_release(rt, pack, mode="canary", percent=50, min_runs=3, actor="ops",
                        margins=Margins(error=0.1))
    store = release_store(rt)

    def run_on(arm: str) -> dict[str, Any]:
        while True:
            rid = str(uuid.uuid4())
            if arm_of(rel.release_id, rid, rel.percent) == arm:
                run = {"run_id": rid, "thread_id": f"th-{rid}", "tenant": env["tenant"], "graph_id": "support"}
                assert store.assign(rel, run) == arm
                return run

    for _ in range(3):
        run_ended(rt, run_on("stable"), "completed")
    failing = [run_on("candidate") for _ in range(12)]
    before = _sample("keel_release_rollbacks_total", release=rel.release_id, metric="error")
    barrier = threading.Barrier(len(failing))

    def finish(run: dict[str, Any]) -> None:
        barrier.wait()
        run_ended(rt, run, "error")  # each worker records its run's outcome and compares the arms

    threads = [threading.Thread(target=finish, args=(r,)) for r in failing]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ended = store.get(rel.release_id)
    assert ended.state == "rolled_back" and "error rate" in ended.reason
    assert len(_release_rows(rt, "release_rolled_back", rel.release_id)) == 1
    assert _sample("keel_release_rollbacks_total", release=rel.release_id, metric="error") - before == 1.0
    assert store.arms(rel.release_id)["candidate"].errors == 12  # every outcome recorded once


# --------------------------------------------------------------------------- shadow
def test_shadow_stores_comparisons_and_never_touches_the_live_run(env):
    rt, tenant = env["rt"], env["tenant"]
    strict = _pack(env["tmp"], "support-strict", {"refund.auto_max_cents": "1000"})
    rel = start_release(rt, strict, mode="shadow", actor="ops")
    calls: list[tuple[str, str]] = []
    real_call = rt.tools.call

    def counting(name: str, args: Any, ctx: Any) -> Any:
        calls.append((threading.current_thread().name, name))
        return real_call(name, args, ctx)

    rt.tools.call = counting  # type: ignore[method-assign]
    refunds = rt.backoffice.count_rows("refunds", tenant)
    live = _run(env, "T-1")  # a refund the shipped pack executes; the strict one would ask approval
    tracked = _run(env, "T-10")
    assert shadow_idle(rt, 60)
    values = _state(env, live)
    # the live run ran the stable pack, untouched: its refund executed once, it completed
    assert live["status"] == "success" and "release" not in live["versions"]
    assert values["status"] == "completed" and [a["state"] for a in values["actions"]] == ["executed"]
    assert rt.backoffice.count_rows("refunds", tenant) == refunds + 1
    # the replays (on the shadow thread) called no tool of the runtime: no side effect, not even a read
    assert [n for t, n in calls if n == "issue_refund"] == ["issue_refund"]
    assert not [c for c in calls if c[0].startswith("keel-shadow")]

    store = release_store(rt)
    rows = {r["run_id"]: r for r in store.comparisons(rel.release_id)}
    assert set(rows) == {live["run_id"], tracked["run_id"]}
    assert rows[live["run_id"]]["changed"] is True and rows[live["run_id"]]["failed"] is False
    assert any(d["kind"] == "verdict" for d in rows[live["run_id"]]["diffs"]), rows[live["run_id"]]["diffs"]
    assert rows[tracked["run_id"]]["changed"] is False and rows[tracked["run_id"]]["diffs"] == []
    stats = store.shadow_stats(rel.release_id)
    assert (stats.compared, stats.changed, stats.failed, stats.agreement) == (2, 1, 0, 0.5)
    assert _sample("keel_release_shadow_runs_total", release=rel.release_id, result="changed") == 1.0
    assert _sample("keel_release_shadow_runs_total", release=rel.release_id, result="same") == 1.0


def test_a_failing_shadow_replay_is_counted_and_the_live_run_stands(env, monkeypatch):
    rt = env["rt"]
    rel = start_release(rt, _pack(env["tmp"], "support-v1-candidate"), mode="shadow", actor="ops")

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("replay exploded")

    import engine.releases

    monkeypatch.setattr(engine.releases, "replay_run", broken)
    live = _run(env, "T-10")
    assert shadow_idle(rt, 60)
    assert live["status"] == "success" and _state(env, live)["status"] == "completed"
    (row,) = release_store(rt).comparisons(rel.release_id)
    assert row["failed"] is True and "replay exploded" in row["error"] and row["changed"] is None
    assert _sample("keel_release_shadow_runs_total", release=rel.release_id, result="failed") == 1.0


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_env(tmp_path, monkeypatch) -> Iterator[Path]:
    """``KEEL_*`` pointing the in-process CLI at an embedded store in tmp (the settings are
    read once per process: their cache is cleared before and after)."""
    for k in [k for k in os.environ if k.startswith("KEEL_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEEL_NOW", "2026-11-25T12:00:00Z")
    monkeypatch.setenv("KEEL_LOG_LEVEL", "WARNING")
    clear = getattr(get_settings, "cache_clear", lambda: None)
    clear()
    yield tmp_path
    clear()


def _keel(capsys, *args: str) -> tuple[int, str, str]:
    from cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, needle", [
    (["release", "start", "missing.toml", "--canary", "50"], "no such file"),
    (["release", "start", "{pack}", "--canary", "150"], "at most 100"),
    (["release", "start", "{pack}", "--canary", "0"], "more than 0"),
    (["release", "start", "{pack}", "--canary", "20", "--margin-error", "2"], "--margin-error"),
    (["release", "start", "{pack}", "--canary", "20", "--min-runs", "0"], "--min-runs"),
    (["release", "start", "{bad}", "--shadow"], "nowhere.toml"),
    (["release", "start", "{pack}", "--shadow", "--graph", "nope"], "graph 'nope'"),
    (["release", "stop"], "no active release"),
    (["release", "promote"], "no active release"),
])
def test_cli_errors_exit_2_with_one_line(cli_env, capsys, args, needle):
    pack = _pack(cli_env, "support-cand")
    bad = cli_env / "bad.toml"
    bad.write_text('name = "x"\npolicy = "nowhere.toml"\n')
    argv = [a.format(pack=pack, bad=bad) for a in args]
    code, out, err = _keel(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err


def test_cli_start_status_second_start_and_promote(cli_env, capsys):
    pack = _pack(cli_env, "support-cand")
    code, out, err = _keel(capsys, "release", "start", str(pack), "--canary", "25", "--margin-escalation", "0.2",
                           "--min-runs", "5", "--json", "--actor", "alice")
    assert code == 0, err
    started = json.loads(out)
    assert started["state"] == "active" and started["percent"] == 25 and started["margins"]["escalation"] == 0.2
    assert "text" not in json.dumps(started["files"])  # status shows hashes, never the files' content
    code, out, err = _keel(capsys, "release", "start", str(pack), "--shadow")
    assert code == 2 and "already has an active release" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _keel(capsys, "release", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["release"]["release_id"] == started["release_id"]
    assert set(status["arms"]) == {"candidate", "stable"} and status["arms"]["candidate"]["runs"] == 0
    code, out, _ = _keel(capsys, "release", "status")
    assert code == 0 and "canary (25% of new runs) of support-cand" in out and "candidate" in out
    code, out, err = _keel(capsys, "release", "promote", "--reason", "looks good", "--actor", "alice")
    assert code == 0, err
    assert "promoted" in out and "policy_file:" in out
    stored = Path(out.split("policy_file:")[1].split()[0])
    assert stored.read_text() == pack.read_text()  # the stored bytes, written back out
    rt = Runtime(Settings(data_dir=cli_env / "data"))
    try:
        events = [r.data["event"] for r in rt.audit.list(AUDIT_TENANT) if r.kind == "release"]
        assert events == ["release_started", "release_promoted"]
        assert release_store(rt).get(started["release_id"]).state == "promoted"
    finally:
        rt.close()
    code, out, _ = _keel(capsys, "release", "stop")
    assert code == 2


def test_module_exports_are_importable():
    for name in releases.__all__:
        assert hasattr(releases, name), name
