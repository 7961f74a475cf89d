"""Two `keel serve` and two `keel worker` processes on one real Postgres: runs are spread
over both workers, any server serves any thread, and a SIGKILLed worker's run completes on
the other from its last checkpoint with each side effect exactly once."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from support.api_fixtures import api_pg_url  # noqa: F401
from support.api_helpers import (
    ROOT, demo_tickets, free_port, keel, keel_env, keel_key, load_demo, new_tenant, spawn, stop, wait_ok, wait_worker,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE = "2"


@pytest.fixture(scope="module")
def cluster(pg_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    marker = tmp / "kill.marker"
    env = keel_env(KEEL_DATABASE_URL=pg_url, KEEL_DATA_DIR=str(tmp), KEEL_PLAN_SIGNING_KEY="cluster-key",
                   KEEL_TEST_KILL_MARKER=str(marker), PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    tenant = new_tenant()
    keys = {role: keel_key(env, tenant, role, f"{role}-user") for role in ("requester", "approver", "admin")}
    ports = [free_port(), free_port()]
    servers = [spawn(env, "serve", "--port", str(p), "--import", "support.api_toy", log=tmp / f"serve{i}.log")
               for i, p in enumerate(ports)]
    workers = [spawn(env, "worker", "--lease-seconds", LEASE, "--poll-seconds", "0.05", "--import", "support.api_hooks",
                     log=tmp / f"worker{i}.log") for i in range(2)]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u, s in zip(urls, servers):
            wait_ok(u, proc=s)
        for i, w in enumerate(workers):
            wait_worker(tmp / f"worker{i}.log", w)
        from keel.config import Settings
        from engine.runtime import Runtime

        rt = Runtime(Settings(database_url=pg_url + "?application_name=keel_cluster_probe", data_dir=tmp))
        load_demo(rt, tenant)
        yield {"env": env, "urls": urls, "workers": workers, "tenant": tenant, "keys": keys, "marker": marker,
               "pg_url": pg_url, "tmp": tmp, "rt": rt}
        rt.close()
    finally:
        stop(*servers, *workers)


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _toy_run(c, url, key, payload) -> tuple[str, str]:
    tid = httpx.post(f"{url}/threads", json={}, headers=_h(key)).json()["thread_id"]
    run = httpx.post(f"{url}/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": payload}, headers=_h(key))
    assert run.status_code == 200, run.text
    return tid, run.json()["run_id"]


def _wait_run(url, key, tid, rid, timeout=30.0) -> dict:
    r = httpx.get(f"{url}/threads/{tid}/runs/{rid}/join", headers=_h(key), timeout=timeout)
    assert r.status_code == 200, r.text
    return httpx.get(f"{url}/threads/{tid}/runs/{rid}", headers=_h(key)).json()


def test_two_servers_two_workers_share_the_work(cluster):
    urls, key = cluster["urls"], cluster["keys"]["requester"]

    def one(i: int) -> dict:
        a, b = urls[i % 2], urls[(i + 1) % 2]
        tid, rid = _toy_run(None, a, key, {"sleep": 0.2})
        return _wait_run(b, key, tid, rid)  # joined through the other server

    with ThreadPoolExecutor(8) as ex:
        runs = list(ex.map(one, range(12)))
    assert all(r["status"] == "success" for r in runs), [(r["status"], r["error"]) for r in runs]
    assert len({r["worker"] for r in runs}) == 2, "both workers should have executed runs"


def test_support_tickets_across_servers_and_workers(cluster):
    urls, keys, tenant = cluster["urls"], cluster["keys"], cluster["tenant"]
    tickets = demo_tickets(tenant)
    tid = httpx.post(f"{urls[0]}/threads", json={}, headers=_h(keys["requester"])).json()["thread_id"]
    out = httpx.post(f"{urls[1]}/threads/{tid}/runs/wait", headers=_h(keys["requester"]), timeout=60,
                     json={"assistant_id": "support", "input": {"ticket": tickets["T-23"]}}).json()
    intr = out["__interrupt__"][0]["value"]
    pending = httpx.get(f"{urls[0]}/approvals", headers=_h(keys["approver"])).json()
    assert tid in [p["thread_id"] for p in pending["items"]]
    r = httpx.post(f"{urls[0]}/approvals/{tid}/approve", headers=_h(keys["approver"]), timeout=60,
                   json={"plan_hash": intr["plan_hash"], "reason": "ok"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "completed"


def _count(pg_url: str, sql: str, *params) -> int:
    with psycopg.connect(pg_url) as c:
        return c.execute(sql, params).fetchone()[0]


def _kill_marked_worker(cluster, timeout=30.0) -> int:
    marker: Path = cluster["marker"]
    deadline = time.monotonic() + timeout
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline, "no worker reached the side effect"
        time.sleep(0.05)
    pid = int(marker.read_text())
    assert pid in [w.pid for w in cluster["workers"]]
    os.kill(pid, signal.SIGKILL)
    return pid


def _ensure_two_workers(cluster) -> None:
    alive = [w for w in cluster["workers"] if w.poll() is None]
    while len(alive) < 2:
        alive.append(spawn(cluster["env"], "worker", "--lease-seconds", LEASE, "--poll-seconds", "0.05", "--import",
                           "support.api_hooks", log=cluster["tmp"] / f"worker-extra{len(alive)}.log"))
    cluster["workers"][:] = alive


def test_sigkill_worker_mid_run_toy(cluster):
    _ensure_two_workers(cluster)
    url, key = cluster["urls"][0], cluster["keys"]["requester"]
    marker = cluster["tmp"] / "toy.marker"
    tid, rid = _toy_run(None, url, key, {"sleep": 60, "marker": str(marker)})
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed = int(marker.read_text())
    os.kill(killed, signal.SIGKILL)
    run = _wait_run(url, key, tid, rid, timeout=60)
    assert run["status"] == "success" and run["attempts"] == 2
    assert run["worker"] and run["worker"].split(":")[1] != str(killed)
    pg = cluster["pg_url"]
    assert _count(pg, "SELECT COUNT(*) FROM toy_effects WHERE thread_id = %s", tid) == 1
    # the effect node ran twice (cut off, then again), the start node once: resumed from its checkpoint
    assert _count(pg, "SELECT COUNT(*) FROM toy_attempts WHERE thread_id = %s AND node = 'effect'", tid) == 2
    assert _count(pg, "SELECT COUNT(*) FROM toy_attempts WHERE thread_id = %s AND node = 'start'", tid) == 1
    state = httpx.get(f"{url}/threads/{tid}/state", headers=_h(key)).json()
    assert state["values"]["steps"] == ["start", "effect", "finish"]


def test_sigkill_worker_after_a_support_side_effect(cluster):
    """The worker that executes the approved refund is killed right after the refund is
    committed (before the checkpoint): the other worker resumes the run and the refund is
    not issued twice (the tool's idempotency key)."""
    _ensure_two_workers(cluster)
    time.sleep(1.0)  # the replacement worker is up
    urls, keys, tenant, rt = cluster["urls"], cluster["keys"], cluster["tenant"], cluster["rt"]
    ticket = demo_tickets(tenant)["T-8"]
    r = httpx.post(f"{urls[0]}/tickets", json={"ticket": ticket, "wait": True}, headers=_h(keys["requester"]), timeout=60)
    out = r.json()
    tid = out["thread_id"]
    plan = out["result"]["__interrupt__"][0]["value"]
    order_id = plan["plan"][0]["args"]["order_id"]
    before = len(rt.backoffice.list_refunds(tenant, order_id))
    Path(str(cluster["marker"]) + ".armed").write_text("1")
    r = httpx.post(f"{urls[1]}/approvals/{tid}/approve", json={"plan_hash": plan["plan_hash"], "wait": False},
                   headers=_h(keys["approver"]), timeout=30)
    assert r.status_code == 200, r.text
    rid = r.json()["run"]["run_id"]
    killed = _kill_marked_worker(cluster)
    run = _wait_run(urls[0], keys["requester"], tid, rid, timeout=90)
    assert run["status"] == "success" and run["attempts"] == 2
    assert run["worker"].split(":")[1] != str(killed)
    state = httpx.get(f"{urls[0]}/threads/{tid}", headers=_h(keys["requester"])).json()
    assert state["values"]["status"] == "completed"
    assert len(rt.backoffice.list_refunds(tenant, order_id)) == before + 1
