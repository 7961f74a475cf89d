"""Two keel hosts sharing one Postgres and nothing else (issue #13, part 4).

A host is one ``keel serve`` and one ``keel worker`` with its own ``KEEL_DATA_DIR`` (so its
own generated plan-signing key), its own Prometheus multiprocess dir and, where the machine
allows it, its own Linux network namespace (:mod:`support.hosts`): the host then reaches only
the database, through a veth pair and a TCP forwarder, and both hosts' APIs listen on the same
port at their own addresses. Where namespaces cannot be made (not root, no ``ip``, no
CAP_NET_ADMIN, a refused veth pair) the same tests run on loopback with a port per host, and
``test_each_host_has_its_own_network_namespace`` is skipped with that reason (``pytest -rs``).

Plans signed on one host verify on the other with no key shared through the environment:
the operator rotates the plan-signing key once (what ``keel keys rotate-signing`` does), which
puts the active key in the database's keyring (:mod:`keel.keys`) that every host reads.

The module's tests run in order on one pair of hosts: the last one SIGKILLs a host.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import _own_database
from support.api_helpers import demo_tickets, load_demo, new_tenant
from support.hosts import Host, make_netns, netns_unavailable, start_host, wait_host

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE = "2"


@dataclass
class Hosts:
    a: Host
    b: Host
    rt: Any
    marker: Path
    rotated_key_id: str
    netns: str
    """``netns`` or ``loopback (<why namespaces could not be made>)``."""
    pg_url: str


@pytest.fixture(scope="module")
def hosts_pg_url() -> Iterator[str]:
    """A Postgres database of this module's own: both hosts' workers claim every queued run of
    their database, and their ``/metrics`` are compared with the runs of one thread, so runs
    other test files left queued in the session's database must not reach them."""
    yield from _own_database("keel_thosts")


@pytest.fixture(scope="module")
def hosts(hosts_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    pg_url = hosts_pg_url
    tmp = tmp_path_factory.mktemp("hosts")
    marker = tmp / "kill.marker"  # a test control file both hosts' kill hook watch (support.api_hooks)
    why_not = netns_unavailable()
    made: list[Host] = []
    try:
        for name in ("a", "b"):
            ns = make_netns(name) if why_not is None else None
            try:
                made.append(start_host(name, pg_url=pg_url, base=tmp, netns=ns, lease_s=LEASE,
                                       extra_env={"KEEL_TEST_KILL_MARKER": str(marker)}))
            except BaseException:
                if ns is not None:
                    ns.close()
                raise
        a, b = made
        from engine.runtime import Runtime  # imported while the hosts start
        from keel.config import Settings

        rt = Runtime(Settings(database_url=pg_url + "?application_name=keel_hosts_operator", data_dir=tmp / "operator"))
        try:
            # the operator's one step for a deployment of several hosts (`keel keys rotate-signing`):
            # a signing key in the database's keyring, which every host reads
            key_id = rt.keyring.rotate().key_id
            for h in made:
                wait_host(h)
            yield Hosts(a=a, b=b, rt=rt, marker=marker, rotated_key_id=key_id, pg_url=pg_url,
                        netns="netns" if why_not is None else f"loopback ({why_not})")
        finally:
            rt.close()
    finally:
        for h in made:
            h.close()


# ------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class Tenant:
    name: str
    keys: dict[str, str]

    def h(self, role: str) -> dict[str, str]:
        return {"x-api-key": self.keys[role]}


def _tenant(hs: Hosts) -> Tenant:
    name = new_tenant()
    load_demo(hs.rt, name)
    return Tenant(name, {role: hs.rt.principals.create_key(name, f"{role}-user", role)
                         for role in ("requester", "approver", "admin")})


def _pid(worker: str | None) -> int:
    assert worker, "the run names no worker"
    return int(worker.split(":")[1])  # host:pid:suffix


def _runs_total(host: Host, t: Tenant) -> dict[str, float]:
    """This host's ``keel_runs_total{workflow="support"}`` by outcome (its serve and worker)."""
    r = httpx.get(f"{host.url}/metrics", headers=t.h("admin"), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "keel_runs_total" and s.labels.get("workflow") == "support":
                out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0) + s.value
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _spans(trees: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    todo = list(trees)
    while todo:
        s = todo.pop()
        out.append(s)
        todo.extend(s["children"])
    return out


def _trace(host: Host, t: Tenant, tid: str, until: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The thread's spans through ``host``'s API, once ``until(spans)`` holds (spans are
    written by each process's background writer a moment after they end)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{host.url}/threads/{tid}/trace", headers=t.h("requester"), timeout=10)
        assert r.status_code == 200, r.text
        spans = _spans(r.json()["traces"])
        if until(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def _join(host: Host, t: Tenant, tid: str, rid: str, timeout: float = 60.0) -> dict[str, Any]:
    r = httpx.get(f"{host.url}/threads/{tid}/runs/{rid}/join", headers=t.h("requester"), timeout=timeout)
    assert r.status_code == 200, r.text
    return httpx.get(f"{host.url}/threads/{tid}/runs/{rid}", headers=t.h("requester"), timeout=10).json()


def _toy_run(host: Host, t: Tenant, payload: dict[str, Any]) -> tuple[str, str]:
    tid = httpx.post(f"{host.url}/threads", json={}, headers=t.h("requester"), timeout=10).json()["thread_id"]
    r = httpx.post(f"{host.url}/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": payload},
                   headers=t.h("requester"), timeout=10)
    assert r.status_code == 200, r.text
    return tid, r.json()["run_id"]


def _ticket_awaiting_approval(host: Host, t: Tenant) -> tuple[str, dict[str, Any]]:
    ticket = demo_tickets(t.name)["T-8"]  # a refund the policy sends to a reviewer
    r = httpx.post(f"{host.url}/tickets", json={"ticket": ticket, "wait": True}, headers=t.h("requester"), timeout=90)
    assert r.status_code == 201, r.text
    out = r.json()
    return out["thread_id"], out["result"]["__interrupt__"][0]["value"]


def _audit_ok(host: Host, t: Tenant) -> dict[str, Any]:
    r = httpx.get(f"{host.url}/audit/verify", headers=t.h("admin"), timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def _plan_key_ids(host: Host, t: Tenant, tid: str) -> list[str | None]:
    """The signing key ids of the thread's plans (its ``plan_proposed`` audit rows)."""
    r = httpx.get(f"{host.url}/threads/{tid}/audit", headers=t.h("admin"), timeout=10)
    assert r.status_code == 200, r.text
    return [row["data"].get("key_id") for row in r.json()["items"] if row["kind"] == "plan_proposed"]


def _count(pg_url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(pg_url) as c:
        return c.execute(sql, params).fetchone()[0]


# ------------------------------------------------------------------ the tests
def test_the_hosts_share_the_database_and_nothing_else(hosts: Hosts) -> None:
    a, b = hosts.a, hosts.b
    assert a.data_dir != b.data_dir and a.url != b.url
    for h in (a, b):
        assert not any(k.startswith("KEEL_PLAN_SIGNING_KEY") for k in h.env), "no signing key through the environment"
        assert httpx.get(f"{h.url}/ok", timeout=5).status_code == 200


def test_each_host_has_its_own_network_namespace(hosts: Hosts) -> None:
    """Skipped, with the reason, where namespaces cannot be made (the hosts run on loopback)."""
    if hosts.netns != "netns":
        pytest.skip(f"hosts on {hosts.netns}")
    a, b = hosts.a, hosts.b
    assert a.url.rsplit(":", 1)[1] == b.url.rsplit(":", 1)[1], "both APIs on one port, at their own addresses"
    # inside its namespace a host reaches neither the address Postgres listens on nor the other host
    probe = ("import socket, sys\nfor addr in sys.argv[1:]:\n    h, p = addr.rsplit(':', 1)\n    try:\n"
             "        socket.create_connection((h, int(p)), timeout=2).close(); print(addr, 'reachable')\n"
             "    except OSError:\n        print(addr, 'unreachable')\n")
    other = b.url.removeprefix("http://")
    pg = urlsplit(hosts.pg_url)
    local_pg = f"{pg.hostname}:{pg.port or 5432}"
    out = subprocess.run(a.command([sys.executable, "-c", probe, local_pg, other]),
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split("\n")[:2] == [f"{local_pg} unreachable", f"{other} unreachable"], out


def test_a_ticket_started_on_one_host_is_approved_and_finished_through_the_other(hosts: Hosts) -> None:
    a, b = hosts.a, hosts.b
    t = _tenant(hosts)
    before = {h.name: _runs_total(h, t) for h in (a, b)}
    tid, plan = _ticket_awaiting_approval(a, t)
    order_id = plan["plan"][0]["args"]["order_id"]
    refunds = len(hosts.rt.backoffice.list_refunds(t.name, order_id))

    pending = httpx.get(f"{b.url}/approvals", headers=t.h("approver"), timeout=10).json()
    assert tid in [p["thread_id"] for p in pending["items"]]
    r = httpx.post(f"{b.url}/approvals/{tid}/approve", json={"plan_hash": plan["plan_hash"], "reason": "ok"},
                   headers=t.h("approver"), timeout=90)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "completed"

    assert len(hosts.rt.backoffice.list_refunds(t.name, order_id)) == refunds + 1  # the side effect, once
    # the plan was signed with the keyring's key from the database, not a host's own data-dir key
    assert _plan_key_ids(b, t, tid) == [hosts.rotated_key_id]
    own_a, own_b = ((h.data_dir / "signing.key").read_bytes() for h in (a, b))
    assert own_a != own_b, "each host generated its own key into its data dir"
    for h in (a, b):  # one chain, as either host verifies it
        report = _audit_ok(h, t)
        assert report["ok"] is True and report["rows"] >= 3, report

    runs = httpx.get(f"{a.url}/threads/{tid}/runs", headers=t.h("requester"), timeout=10).json()
    assert sorted(r["status"] for r in runs) == ["success", "success"]
    workers = {a.worker_pid: a.name, b.worker_pid: b.name}
    by_host = {h.name: sum(1 for r in runs if workers[_pid(r["worker"])] == h.name) for h in (a, b)}
    # each host's /metrics counts what its own worker did; together, every run once (a worker
    # counts a run just after committing its end, so the last count may trail the API a moment)
    deadline = time.monotonic() + 15
    while True:
        deltas = {h.name: _delta(_runs_total(h, t), before[h.name]) for h in (a, b)}
        if sum(sum(d.values()) for d in deltas.values()) >= len(runs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {n: sum(d.values()) for n, d in deltas.items()} == by_host, (deltas, runs)
    total: dict[str, float] = {}
    for d in deltas.values():
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    assert total == {"awaiting_approval": 1, "completed": 1}, deltas


def _wait_marker(marker: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline, "no worker reached the side effect"
        time.sleep(0.05)
    return int(marker.read_text())


def test_a_host_killed_mid_run_loses_nothing(hosts: Hosts) -> None:
    """The worker executing an approved refund hangs right after the refund is committed
    (``support.api_hooks``); its whole host (serve and worker) is SIGKILLed; the other host's
    worker takes the run over when the lease expires and finishes it, the refund issued once.
    Runs queued through the dead host's API while it hung complete too, and a run's trace
    spans both hosts."""
    t = _tenant(hosts)
    tid, plan = _ticket_awaiting_approval(hosts.a, t)
    order_id = plan["plan"][0]["args"]["order_id"]
    refunds = len(hosts.rt.backoffice.list_refunds(t.name, order_id))

    Path(str(hosts.marker) + ".armed").write_text("1")
    r = httpx.post(f"{hosts.b.url}/approvals/{tid}/approve", json={"plan_hash": plan["plan_hash"], "wait": False},
                   headers=t.h("approver"), timeout=30)
    assert r.status_code == 200, r.text
    rid = r.json()["run"]["run_id"]
    hung = _wait_marker(hosts.marker)
    dead, alive = (hosts.a, hosts.b) if hung == hosts.a.worker_pid else (hosts.b, hosts.a)
    assert hung == dead.worker_pid

    # while the dead host's only worker hangs, runs queued through its API are the other host's
    probe_tid, probe_rid = _toy_run(dead, t, {})
    queued = [_toy_run(dead, t, {"sleep": 0.2}) for _ in range(3)]
    probe = _join(alive, t, probe_tid, probe_rid)
    assert probe["status"] == "success" and _pid(probe["worker"]) == alive.worker_pid
    # one trace: the request span of the dead host's API, the run span of the other's worker
    spans = _trace(alive, t, probe_tid, lambda s: any(x["name"].startswith("POST ") for x in s)
                   and any(x["name"] == "run toy_slow" for x in s))
    (request,) = [s for s in spans if s["name"] == "POST /threads/{thread_id}/runs"]
    (run,) = [s for s in spans if s["name"] == "run toy_slow"]
    assert run["trace_id"] == request["trace_id"] and _pid(run["attributes"]["keel.worker"]) == alive.worker_pid
    assert {s["span_id"] for s in _trace(dead, t, probe_tid, lambda s: True)} == {s["span_id"] for s in spans}

    # the dead host's attempt is in the run's trace before the host goes (its spans are written
    # a moment after they end, and a SIGKILL loses what is not written yet)
    attempt_1 = lambda s: any(x["name"] == "queue.wait" and x["attributes"].get("keel.run_id") == rid  # noqa: E731
                              and x["attributes"].get("keel.run.attempt") == 1 for x in s)
    assert attempt_1(_trace(alive, t, tid, attempt_1)), "the first attempt's spans were not stored"
    dead.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{dead.url}/ok", timeout=2)

    run = _join(alive, t, tid, rid, timeout=90)
    assert run["status"] == "success" and run["attempts"] == 2, run
    assert _pid(run["worker"]) == alive.worker_pid
    state = httpx.get(f"{alive.url}/threads/{tid}", headers=t.h("requester"), timeout=10).json()
    assert state["values"]["status"] == "completed"
    assert len(hosts.rt.backoffice.list_refunds(t.name, order_id)) == refunds + 1  # not issued twice
    assert _plan_key_ids(alive, t, tid) == [hosts.rotated_key_id]
    report = _audit_ok(alive, t)
    assert report["ok"] is True, report

    # no run lost or duplicated: the thread's two runs, each once, and every queued toy run once
    runs = httpx.get(f"{alive.url}/threads/{tid}/runs", headers=t.h("requester"), timeout=10).json()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"success"}, runs
    for qtid, qrid in queued:
        assert _join(alive, t, qtid, qrid)["status"] == "success"
        assert _count(hosts.pg_url, "SELECT COUNT(*) FROM toy_effects WHERE thread_id = %s", qtid) == 1
    assert _count(hosts.pg_url, "SELECT COUNT(*) FROM api_runs WHERE tenant = %s AND status <> 'success'", t.name) == 0
    assert _count(hosts.pg_url, "SELECT COUNT(*) FROM api_runs WHERE tenant = %s", t.name) == 2 + 1 + len(queued)

    # the resumed run's trace: the approval request, attempt 1 on the dead host, attempt 2 here
    spans = _trace(alive, t, tid, lambda s: any(x["name"] == "run support" and x["attributes"].get("keel.run_id") == rid
                                                for x in s))
    mine = [s for s in spans if s["attributes"].get("keel.run_id") == rid]
    (approve,) = [s for s in spans if s["name"] == "POST /approvals/{thread_id}/approve"]
    waits = sorted(s["attributes"].get("keel.run.attempt") for s in mine if s["name"] == "queue.wait")
    (finished,) = [s for s in mine if s["name"] == "run support" and s["attributes"].get("keel.run.attempt") == 2]
    assert waits == [1, 2], waits
    assert _pid(finished["attributes"]["keel.worker"]) == alive.worker_pid
    assert {s["trace_id"] for s in mine} == {approve["trace_id"]}, "one trace across both hosts"
