"""Observability (issue 9, parts 1-3): one trace per run from the API request to the worker,
with a span per node, model call, tool call, policy decision and approval (GenAI semantic
conventions plus ``keel.*``), kept in keel's database (``GET /threads/{id}/trace``, ``keel
trace``) and exported over OTLP/HTTP when configured; Prometheus ``/metrics``; JSON logs
with the run's context; and the versions a run ran with, on the run, its audit row and its span.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from keel import telemetry
from support.api_helpers import demo_tickets, keel, keel_env, load_demo, new_tenant

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
EMAIL, NAME, PHONE = "marguerite.okafor@example.org", "Marguerite Okafor", "+1 415 555 0199"
"""Personal data written into the ticket: none of it may reach a span."""

_MEMORY = InMemorySpanExporter()
telemetry.provider().add_span_processor(SimpleSpanProcessor(_MEMORY))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory):
    """``(runtime, client, keel_env)``: keel's app with an embedded worker on SQLite or Postgres,
    and the ``KEEL_*`` variables that point the CLI at the same store."""
    from api.app import create_app
    from engine.runtime import Runtime
    from keel.config import Settings

    data = tmp_path_factory.mktemp("telemetry")
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    rt = Runtime(Settings(database_url=url, data_dir=data, now=NOW, plan_signing_key="telemetry-test-key"))
    app = create_app(rt, embedded_worker=True, worker_kwargs={"poll_s": 0.05})
    keel_env = {"KEEL_DATA_DIR": str(data), **({"KEEL_DATABASE_URL": url} if url else {})}
    with TestClient(app) as client:
        yield rt, client, keel_env
    rt.close()


@pytest.fixture(scope="module")
def done(env):
    """A refund ticket carrying personal data, run to its approval and approved: ``(thread_id,
    first run, resume run, tenant, headers)``."""
    rt, client, _ = env
    t = new_tenant()
    load_demo(rt, t)
    req = {"x-api-key": rt.principals.create_key(t, "rita", "requester")}
    boss = {"x-api-key": rt.principals.create_key(t, "alex", "approver")}
    ticket = demo_tickets(t)["T-8"]
    ticket = {**ticket, "body": f"{ticket['body']}\n\nThanks, {NAME} ({EMAIL}, {PHONE})"}
    _MEMORY.clear()
    tid = client.post("/threads", json={}, headers=req).json()["thread_id"]
    r = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "support", "input": {"ticket": ticket}},
                    headers=req)
    assert r.status_code == 200, r.text
    intr = r.json()["__interrupt__"][0]["value"]
    r = client.post(f"/threads/{tid}/runs/wait", headers=boss, json={
        "assistant_id": "support",
        "command": {"resume": {"decision": "approve", "plan_hash": intr["plan_hash"], "reason": "ok"}}})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    runs = client.get(f"/threads/{tid}/runs", headers=req).json()
    first, resume = sorted(runs, key=lambda x: x["created_at"])
    # the worker ends a run's span just after committing the run's end, which is what wakes
    # the waiting request: the span may land a moment after the response
    deadline = time.monotonic() + 15
    while not all(_run_spans(r["run_id"]) for r in (first, resume)) and time.monotonic() < deadline:
        telemetry.flush()
        time.sleep(0.05)
    telemetry.flush()
    return tid, first, resume, t, req


def _run_spans(run_id: str) -> list[Any]:
    return [s for s in _MEMORY.get_finished_spans() if s.attributes.get("keel.run_id") == run_id
            and s.name.startswith("run ")]


def _spans(run_id: str) -> list[Any]:
    """Every in-memory span of the trace of ``run_id``'s run span."""
    runs = _run_spans(run_id)
    assert runs, f"no run span for {run_id}"
    trace_id = runs[-1].context.trace_id
    return [s for s in _MEMORY.get_finished_spans() if s.context.trace_id == trace_id]


def _parent(spans: list[Any], span: Any) -> Any:
    return next(s for s in spans if span.parent is not None and s.context.span_id == span.parent.span_id)


def test_one_trace_from_api_request_to_every_node_model_tool_and_policy_span(done):
    tid, first, _, tenant, _ = done
    spans = _spans(first["run_id"])
    by_name = {s.name for s in spans}
    # the API request that queued the run is the root; the worker's spans continue its trace
    (request,) = [s for s in spans if s.kind.name == "SERVER"]
    assert request.parent is None and request.name == "POST /threads/{thread_id}/runs/wait"
    assert request.attributes["keel.thread_id"] == tid
    (run,) = [s for s in spans if s.name == "run support"]
    assert _parent(spans, run) is request
    assert run.attributes["keel.tenant"] == tenant and run.attributes["keel.thread_id"] == tid
    (wait,) = [s for s in spans if s.name == "queue.wait"]
    assert _parent(spans, wait) is request and wait.attributes["keel.queue.wait_ms"] >= 0

    # every node LangGraph ran up to the approval, each under the run
    nodes = {s.attributes["keel.node"]: s for s in spans if s.name.startswith("node ")}
    assert {"triage", "retrieve_context", "propose_action", "policy_check", "await_approval"} <= set(nodes)
    assert all(_parent(spans, s) is run for s in nodes.values())
    assert nodes["await_approval"].attributes.get("keel.node.interrupted") is True

    models = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert {s.attributes["keel.model.task"] for s in models} >= {"triage", "plan"}
    for s in models:
        assert s.kind.name == "CLIENT" and s.name == f"chat {s.attributes['gen_ai.request.model']}"
        assert s.attributes["gen_ai.provider.name"] == "keel.local"
        assert s.attributes["gen_ai.usage.input_tokens"] >= 0 and s.attributes["gen_ai.usage.output_tokens"] >= 0
        assert s.attributes["keel.tenant"] == tenant
        assert _parent(spans, s).name.startswith("node ")

    tools = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert tools and all(s.name == f"execute_tool {s.attributes['gen_ai.tool.name']}" for s in tools)
    assert all(_parent(spans, s).name.startswith("node ") and s.attributes["keel.tool.ok"] is True for s in tools)

    (policy,) = [s for s in spans if s.name == "policy.decide"]
    assert _parent(spans, policy) is nodes["policy_check"]
    assert policy.attributes["keel.policy.decision"] == "approve"
    assert policy.attributes["keel.policy.version"] and len(policy.attributes["keel.policy.sha256"]) == 64
    assert policy.attributes["keel.route.name"] == run.attributes["keel.route.name"] == "billing"
    assert "run support" in by_name


def test_the_approval_and_the_side_effect_are_traced_in_the_resume_run(done):
    tid, _, resume, _, _ = done
    spans = _spans(resume["run_id"])
    (approval,) = [s for s in spans if s.name == "approval.decide"]
    assert approval.attributes["keel.approval.decision"] == "approve"
    assert approval.attributes["keel.approval.outcome"] == "accepted"
    assert approval.attributes["keel.approval.reviewer_role"] == "approver"
    assert approval.attributes["keel.approval.wait_s"] >= 0
    (request,) = [s for s in spans if s.kind.name == "SERVER"]
    assert _parent(spans, approval) is request  # decided in the request that queued the resume
    nodes = {s.attributes["keel.node"] for s in spans if s.name.startswith("node ")}
    assert {"await_approval", "execute_action", "verify", "complete"} <= nodes
    tools = {s.attributes["gen_ai.tool.name"] for s in spans if "gen_ai.tool.name" in s.attributes}
    assert "issue_refund" in tools, tools
    # the refund's last policy check runs in the tool runner's thread, inside the tool's span
    (refund,) = [s for s in spans if s.name == "execute_tool issue_refund"]
    assert any(s.name == "policy.decide" and _parent(spans, s) is refund for s in spans)
    (run,) = [s for s in spans if s.name == "run support"]
    assert run.attributes["keel.run.outcome"] == "completed"


def test_no_personal_data_of_the_ticket_in_any_span(done, env):
    rt, _, _ = env
    tid, _, _, tenant, _ = done
    dumped = []
    for s in _MEMORY.get_finished_spans():
        dumped.append(json.dumps({k: v for k, v in (s.attributes or {}).items()}, default=str))
        dumped += [json.dumps(dict(e.attributes or {}), default=str) for e in s.events]
        dumped.append(s.status.description or "")
    stored = rt.db.fetchone("SELECT COUNT(*) AS n FROM keel_spans WHERE tenant = ?", (tenant,))["n"]
    assert stored > 10
    with rt.db.transaction() as tx:
        dumped += [json.dumps(r) for r in tx.fetchall("SELECT * FROM keel_spans WHERE thread_id = ?", (tid,))]
    text = "\n".join(dumped)
    for secret in (EMAIL, NAME, PHONE, "Marguerite", "Okafor", "555 0199"):
        assert secret not in text


def test_exported_spans_are_dlp_redacted():
    """Anything that does put personal data in an attribute is scrubbed on the way out."""
    telemetry.install()  # keeps the redactor the engine installed
    from engine.tracing import install_tracing  # noqa: F401 - the engine's redactor is the DLP guard's
    from opentelemetry.sdk.trace import ReadableSpan

    tr = telemetry.tracer()
    with tr.start_as_current_span("probe") as span:
        span.set_attribute("keel.note", f"write to {EMAIL}")
        span.add_event("e", {"who": f"call {PHONE}"})
    probe = [s for s in _MEMORY.get_finished_spans() if s.name == "probe"][-1]
    clean: ReadableSpan = telemetry.redact_span(probe)
    assert EMAIL not in clean.attributes["keel.note"] and PHONE not in clean.events[0].attributes["who"]


def test_trace_endpoint_returns_the_tree_with_timings(done, env):
    _, client, _ = env
    tid, first, resume, _, req = done
    r = client.get(f"/threads/{tid}/trace", headers=req)
    assert r.status_code == 200, r.text
    traces = r.json()["traces"]
    assert len(traces) == 2  # one per run
    root = traces[0]
    assert root["name"] == "POST /threads/{thread_id}/runs/wait"
    run = next(c for c in root["children"] if c["name"] == "run support")
    assert run["attributes"]["keel.run_id"] == first["run_id"]
    policy_node = next(c for c in run["children"] if c["name"] == "node policy_check")
    assert [c["name"] for c in policy_node["children"]] == ["policy.decide"]
    assert all(isinstance(n["duration_ms"], float) and n["duration_ms"] >= 0 for n in run["children"])
    assert run["duration_ms"] >= max(c["duration_ms"] for c in run["children"])
    second = traces[1]
    assert any(c["name"] == "approval.decide" for c in second["children"])
    # another tenant's key sees no such thread
    other = new_tenant()
    key = {"x-api-key": env[0].principals.create_key(other, "eve", "admin")}
    assert client.get(f"/threads/{tid}/trace", headers=key).status_code == 404


@pytest.mark.slow
def test_keel_trace_prints_the_tree(done, env):
    """``keel trace THREAD`` (a separate process on the same store, as an operator runs it)."""
    _, _, store_env = env
    tid, first, _, tenant, _ = done
    env_vars = keel_env(**store_env)
    p = keel(env_vars, "trace", tid)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("trace ") and "POST /threads/{thread_id}/runs/wait" in lines[1]
    policy = next(line for line in lines if "policy.decide" in line)
    assert policy.startswith("        ") and " ms" in policy and "decision=approve" in policy
    assert any("node triage" in line for line in lines) and any("approval.decide" in line for line in lines)
    p = keel(env_vars, "trace", tid, "--tenant", tenant, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["traces"][0]["attributes"]["keel.run_id"] == first["run_id"]
    p = keel(env_vars, "trace", tid, "--tenant", "someone-else")
    assert p.returncode == 2 and "no spans recorded" in p.stderr and "Traceback" not in p.stderr


def test_versions_on_the_run_the_audit_row_and_the_span(done, env):
    rt, client, _ = env
    tid, first, resume, tenant, req = done
    run = client.get(f"/threads/{tid}/runs/{first['run_id']}", headers=req).json()
    versions = run["versions"]
    assert set(versions) == {"graph", "policy_pack", "prompts", "tool_contracts", "model_routing", "environment"}
    assert versions["environment"]["version"] == rt.settings.env == "dev"  # KEEL_ENV (keel.config)
    assert all(len(v["sha256"]) == 64 and v["version"] for v in versions.values())
    assert versions["policy_pack"] == {"version": rt.policy.version, "sha256": rt.policy.sha256}
    audit = client.get(f"/threads/{tid}/audit", headers=req).json()["items"]
    started = [a for a in audit if a["kind"] == "run_started"]
    assert [a["data"]["run_id"] for a in started] == [first["run_id"], resume["run_id"]]
    assert started[0]["data"]["versions"] == versions
    (span,) = [s for s in _spans(first["run_id"]) if s.name == "run support"]
    for part, v in versions.items():
        assert span.attributes[f"keel.version.{part}"] == v["version"]
        assert span.attributes[f"keel.version.{part}.sha256"] == v["sha256"]


def test_a_changed_pack_prompt_or_routing_changes_its_hash(tmp_path, monkeypatch):
    from engine.runtime import Runtime
    from engine.versions import run_versions
    from guards.pack import DEFAULT_POLICY_PATH
    from keel.config import Settings

    pack = tmp_path / "pack.toml"
    pack.write_text(DEFAULT_POLICY_PATH.read_text().replace("tenant_daily_runs = 20000", "tenant_daily_runs = 19999"))
    base = Runtime(Settings(data_dir=tmp_path / "a", now=NOW))
    other = Runtime(Settings(data_dir=tmp_path / "b", now=NOW, policy_file=pack, model_fallbacks=["local", "openai"]))
    try:
        a = run_versions(base, "support", base.graph("support"))
        b = run_versions(other, "support", other.graph("support"))
        assert a["policy_pack"]["sha256"] != b["policy_pack"]["sha256"]
        assert a["model_routing"]["sha256"] != b["model_routing"]["sha256"]
        assert a["graph"] == b["graph"] and a["tool_contracts"] == b["tool_contracts"] and a["prompts"] == b["prompts"]
        import gateway.prompts as prompts

        monkeypatch.setitem(prompts.SYSTEM_PROMPTS, "plan", prompts.SYSTEM_PROMPTS["plan"] + " Be brief.")
        assert run_versions(base, "support", base.graph("support"))["prompts"]["sha256"] != a["prompts"]["sha256"]
    finally:
        base.close()
        other.close()


def _families(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_move_as_runs_complete(done, env):
    rt, client, _ = env
    t = new_tenant()
    load_demo(rt, t)
    h = {"x-api-key": rt.principals.create_key(t, "rita", "requester")}
    admin = {"x-api-key": rt.principals.create_key(t, "ada", "admin")}
    before = _families(client, admin)
    tickets = demo_tickets(t)
    outcomes: dict[str, int] = {}
    for tid_ticket in ("T-5", "T-2", "T-3"):  # a cancellation, gibberish, a full refund
        r = client.post("/tickets", json={"ticket": tickets[tid_ticket], "wait": True}, headers=h)
        assert r.status_code in (200, 201), r.text
        status = r.json()["result"]["status"]
        outcomes[status] = outcomes.get(status, 0) + 1
    assert len(outcomes) >= 2, outcomes  # the tickets end differently
    after = _families(client, admin)
    runs = lambda f, **kw: _value(f, "keel_runs", "keel_runs_total", workflow="support", **kw)  # noqa: E731
    assert runs(after) - runs(before) == 3
    for outcome, n in outcomes.items():  # escalation rate: escalated over all outcomes
        assert runs(after, outcome=outcome) - runs(before, outcome=outcome) == n, outcome
    nodes = lambda f: _value(f, "keel_node_seconds", "keel_node_seconds_count", workflow="support", node="triage")  # noqa: E731
    assert nodes(after) - nodes(before) == 3
    assert _value(after, "keel_model_seconds", "keel_model_seconds_count", task="triage") >= 2
    assert _value(after, "keel_approval_wait_seconds", "keel_approval_wait_seconds_count", decision="approve") >= 1
    assert _value(after, "keel_tool_calls", "keel_tool_calls_total") >= 1
    for name in ("keel_queue_depth", "keel_queue_oldest_age_seconds", "keel_runs_running", "keel_dead_letter_runs",
                 "keel_tokens", "keel_cost_usd", "keel_dead_letters", "keel_leases_lost", "keel_tool_failures"):
        assert name in after or name in {f.name for f in after.values()}, name


def test_queue_depth_and_oldest_age_come_from_the_database(env):
    from engine.queue_metrics import QueueCollector

    rt, _, _ = env
    from engine.queue import RunQueue

    q = RunQueue(rt.db)
    t = new_tenant()
    th, _ = q.create_thread(t, "rita")
    q.create_run(t, th["thread_id"], assistant_id="toy", graph_id="toy-unclaimed", kind="input",
                 payload={"input": {}}, created_by="rita", correlation_id="c", after_seconds=3600)
    fams = {f.name: f for f in QueueCollector(rt.db).collect()}
    depth = [s for s in fams["keel_queue_depth"].samples if s.labels["workflow"] == "toy-unclaimed"]
    age = [s for s in fams["keel_queue_oldest_age_seconds"].samples if s.labels["workflow"] == "toy-unclaimed"]
    assert [s.value for s in depth] == [1] and 0 <= age[0].value < 60


def test_json_logs_carry_correlation_tenant_thread_run_and_trace():
    from engine.correlation import CorrelationFilter, JsonFormatter, correlation_var

    rec = logging.LogRecord("keel.worker", logging.INFO, __file__, 1, "run %s started", ("r-1",), None)
    token = correlation_var.set("cid-1")
    labels = telemetry.run_labels.set({"tenant": "acme", "thread_id": "th-1", "run_id": "r-1"})
    try:
        with telemetry.tracer().start_as_current_span("probe-log") as span:
            CorrelationFilter().filter(rec)
            line = json.loads(JsonFormatter().format(rec))
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        telemetry.run_labels.reset(labels)
        correlation_var.reset(token)
    assert line["message"] == "run r-1 started" and line["level"] == "INFO" and line["logger"] == "keel.worker"
    assert (line["correlation_id"], line["tenant"], line["thread_id"], line["run_id"]) == ("cid-1", "acme", "th-1", "r-1")
    assert line["trace_id"] == trace_id
    bare = logging.LogRecord("keel.api", logging.INFO, __file__, 1, "hello", (), None)
    CorrelationFilter().filter(bare)
    assert json.loads(JsonFormatter().format(bare))["tenant"] is None


# -- OTLP/HTTP export, in a child process (the exporter stays installed for its life) ---------
class _Receiver(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


_CHILD = r"""
import json, sys
from datetime import UTC, datetime
from fastapi.testclient import TestClient
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from api.app import create_app
from engine.runtime import Runtime
from keel import telemetry
from keel.config import Settings
from support.api_helpers import demo_tickets, load_demo
rt = Runtime(Settings(data_dir=sys.argv[2], now=datetime(2026, 11, 25, 12, tzinfo=UTC)))
load_demo(rt, "acme")
key = {"x-api-key": rt.principals.create_key("acme", "rita", "requester")}
with TestClient(create_app(rt, embedded_worker=True, worker_kwargs={"poll_s": 0.05})) as c:
    r = c.post("/tickets", json={"ticket": demo_tickets("acme")["T-1"], "wait": True}, headers=key)
    assert r.status_code in (200, 201), r.text
    # the worker ends the run's span just after the run's end wakes this request: wait for it
    import time
    tid, deadline = r.json()["thread_id"], time.monotonic() + 30
    def names(nodes):
        return [n["name"] for n in nodes] + [m for n in nodes for m in names(n["children"])]
    from engine.tracing import thread_trace
    while "run support" not in names(thread_trace(rt, "acme", tid)):  # the store (no request: no span)
        assert time.monotonic() < deadline, "no run span"
        time.sleep(0.05)
telemetry.flush()
telemetry.provider().shutdown()
rt.close()
"""


@pytest.mark.slow
def test_spans_are_exported_over_otlp_http_to_a_collector(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Receiver.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
               "OTEL_SERVICE_NAME": "keel-test", "KEEL_LOG_LEVEL": "WARNING"}
        p = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(tmp_path / "data")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        deadline = time.monotonic() + 10
        while not _Receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.shutdown()
    assert _Receiver.bodies and {path for path, _ in _Receiver.bodies} == {"/v1/traces"}
    names, services, trace_ids, attrs, by_trace = set(), set(), set(), {}, {}
    for _, body in _Receiver.bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    names.add(s.name)
                    trace_ids.add(s.trace_id)
                    by_trace.setdefault(s.trace_id, []).append(s.name)
                    for a in s.attributes:
                        attrs.setdefault(a.key, a.value)
    assert services == {"keel-test"}
    assert {"POST /tickets", "queue.wait", "run support", "node triage", "policy.decide"} <= names
    assert any(n.startswith("chat ") for n in names) and any(n.startswith("execute_tool ") for n in names)
    assert len(trace_ids) == 1, by_trace  # the request and the worker's spans: one trace
    assert attrs["gen_ai.operation.name"].string_value and attrs["keel.policy.decision"].string_value


def test_metrics_sum_over_processes_in_multiprocess_mode(env, tmp_path, monkeypatch):
    """With PROMETHEUS_MULTIPROC_DIR, a scrape of the server reports what every process (the
    workers) counted, summed."""
    rt, client, _ = env
    admin = {"x-api-key": rt.principals.create_key(new_tenant(), "ada", "admin")}
    mp = tmp_path / "prom"
    mp.mkdir()
    child = ("import sys; sys.path.insert(0, sys.argv[1]); from keel import metrics; "
             "metrics.run_ended('mp-workflow', 'completed'); metrics.tool_called('mp_tool', False, 'timeout')")
    for _ in range(2):  # two worker processes
        p = subprocess.run([sys.executable, "-c", child, str(ROOT)], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
    fams = _families(client, admin)
    assert _value(fams, "keel_runs", "keel_runs_total", workflow="mp-workflow", outcome="completed") == 2
    assert _value(fams, "keel_tool_failures", "keel_tool_failures_total", tool="mp_tool", code="timeout") == 2
    assert "keel_queue_depth" in fams  # read from the database in either mode


def test_metrics_need_the_operator_token_or_an_admin_key_and_show_a_tenant_only_its_own(tmp_path):
    """Series name tenants: the operator's scraper (KEEL_METRICS_TOKEN) sees every tenant, a
    tenant's admin only its own; no key, a wrong token or another role is refused."""
    from api.app import create_app
    from engine.runtime import Runtime
    from keel import metrics
    from keel.config import Settings

    rt = Runtime(Settings(data_dir=tmp_path, now=NOW, metrics_token="s3cret-scrape"))
    mine, theirs = new_tenant(), new_tenant()
    metrics.quota_used(mine, "runs", 1, 10)
    metrics.quota_used(theirs, "runs", 9, 10)
    try:
        with TestClient(create_app(rt, embedded_worker=False)) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            req = {"x-api-key": rt.principals.create_key(mine, "rita", "requester")}
            assert c.get("/metrics", headers=req).status_code == 403
            operator = _families(c, {"Authorization": "Bearer s3cret-scrape"})
            ratios = {s.labels["tenant"] for s in operator["keel_quota_used_ratio"].samples}
            assert {mine, theirs} <= ratios and "keel_queue_depth" in operator
            admin = _families(c, {"x-api-key": rt.principals.create_key(mine, "ada", "admin")})
            assert {s.labels["tenant"] for s in admin["keel_quota_used_ratio"].samples} == {mine}
            assert "keel_runs" in admin and "keel_queue_depth" in admin
    finally:
        rt.close()


@pytest.mark.slow
def test_langsmith_tracing_works_when_its_variables_are_set(tmp_path):
    """keel's node handler sits beside LangChain's own LangSmith tracer, never instead of it:
    with LANGSMITH_TRACING set, the run's nodes reach the LangSmith endpoint."""
    _Receiver.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "LANGSMITH_TRACING": "true", "LANGSMITH_API_KEY": "ls-test",
               "LANGSMITH_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "LANGSMITH_PROJECT": "keel-test",
               "KEEL_LOG_LEVEL": "WARNING"}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        child = _CHILD.replace("telemetry.flush()", "from langchain_core.tracers.langchain import wait_for_all_tracers; "
                                                    "wait_for_all_tracers(); telemetry.flush()")
        p = subprocess.run([sys.executable, "-c", child, str(ROOT), str(tmp_path / "data")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
    finally:
        server.shutdown()
    sent = b"".join(body for path, body in _Receiver.bodies if path.startswith("/runs"))
    assert b"triage" in sent and b"policy_check" in sent, [path for path, _ in _Receiver.bodies]


def test_langsmith_is_off_by_default(env, monkeypatch):
    """keel turns nothing on: with no LangSmith variable set, a served app traces to LangSmith
    nowhere (and keel sets none of the variables itself)."""
    from langsmith.utils import tracing_is_enabled

    for v in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.delenv(v, raising=False)
    before = dict(os.environ)
    from api.app import create_app  # noqa: F401 - importing and serving set nothing
    from engine.worker import Worker

    rt, _, _ = env
    cfg = Worker(rt, None)._config({"run_id": "r", "thread_id": "t", "tenant": "x", "graph_id": "support",  # type: ignore[arg-type]
                                    "correlation_id": "c", "requester": "u", "created_by": "u", "payload": {}})
    assert [type(h).__name__ for h in cfg["callbacks"]] == ["NodeSpans"]  # beside LangChain's own tracers
    assert dict(os.environ) == before and not tracing_is_enabled()


def test_dead_letters_are_counted(env):
    from prometheus_client import REGISTRY

    from engine.queue import RunQueue
    from engine.worker import Worker

    rt, _, _ = env
    q = RunQueue(rt.db)
    t = new_tenant()
    th, _ = q.create_thread(t, "rita")
    run = q.create_run(t, th["thread_id"], assistant_id="support", graph_id="support-dl", kind="input",
                       payload={"input": {}}, created_by="rita", correlation_id="c", after_seconds=3600)
    labels = {"workflow": "support-dl", "reason": "retries_exhausted"}
    before = REGISTRY.get_sample_value("keel_dead_letters_total", labels) or 0.0
    Worker(rt, q)._audit_dead_letter({**run, "dead_reason": "retries_exhausted"})
    assert REGISTRY.get_sample_value("keel_dead_letters_total", labels) == before + 1


def test_deleting_a_thread_deletes_its_traces(env):
    rt, client, _ = env
    t = new_tenant()
    load_demo(rt, t)
    h = {"x-api-key": rt.principals.create_key(t, "rita", "requester")}
    r = client.post("/tickets", json={"ticket": demo_tickets(t)["T-2"], "wait": True}, headers=h)
    tid = r.json()["thread_id"]
    assert client.get(f"/threads/{tid}/trace", headers=h).json()["traces"]
    assert client.delete(f"/threads/{tid}", headers=h).status_code in (200, 204)
    assert rt.db.fetchone("SELECT COUNT(*) AS n FROM keel_spans WHERE thread_id = ?", (tid,))["n"] == 0
    assert client.get(f"/threads/{tid}/trace", headers=h).status_code == 404


def test_the_supply_workflow_is_traced_with_its_own_pack(tmp_path):
    """Any graph keel runs gets node spans (LangGraph's callbacks, no tracing code in nodes);
    supply's policy decisions are spans under its own pack's version."""
    from api.app import create_app
    from engine.runtime import Runtime
    from engine.supply import load_supply_fixtures, supply_parts
    from keel.config import Settings

    supply = ROOT / "workflows" / "supply"
    event = json.loads((supply / "events.jsonl").read_text().splitlines()[0])
    rt = Runtime(Settings(data_dir=tmp_path, now=datetime(2027, 5, 12, 15, tzinfo=UTC), plan_signing_key="k" * 32))
    try:
        load_supply_fixtures(rt, supply / "fixtures.json")
        tenant = event["tenant"]
        key = {"x-api-key": rt.principals.create_key(tenant, "rita", "requester")}
        with TestClient(create_app(rt, embedded_worker=True, worker_kwargs={"poll_s": 0.05})) as client:
            tid = client.post("/threads", json={}, headers=key).json()["thread_id"]
            r = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "supply", "input": {"event": event}},
                            headers=key)
            assert r.status_code == 200, r.text
            (run,) = client.get(f"/threads/{tid}/runs", headers=key).json()
        telemetry.flush()
        spans = _spans(run["run_id"])
        assert {s.name for s in spans} >= {"run supply", "queue.wait"}
        assert len([s for s in spans if s.name.startswith("node ")]) >= 3
        assert all(s.attributes["keel.graph_id"] == "supply" for s in spans if s.name.startswith("node "))
        decisions = [s for s in spans if s.name == "policy.decide"]
        assert decisions and decisions[0].attributes["keel.policy.version"] == supply_parts(rt).pack.version
        assert run["versions"]["policy_pack"]["version"] == supply_parts(rt).pack.version
    finally:
        rt.close()
