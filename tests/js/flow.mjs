// keel driven by the official JS/TS LangGraph SDK (@langchain/langgraph-sdk, pinned in
// package-lock.json): the same thread -> run -> interrupt -> approve -> completed flow a
// LangGraph Platform client runs, plus state, history and SSE streaming, against a live
// `keel serve`. tests/test_client_js.py starts the server (embedded SQLite and Postgres),
// creates the keys and runs this file with node; it can also be run by hand:
//
//   FLOW_URL=http://127.0.0.1:8123 FLOW_REQUESTER_KEY=… FLOW_APPROVER_KEY=… FLOW_APPROVER_USER=bob \
//     node tests/js/flow.mjs
//
// The tickets are the bundled demo fixtures' (tenant acme): C-1002's espresso machine
// (order O-5002, 89.99) and C-1001's lamp (order O-5016, 54.00) are refunds above the
// automatic tier and below the agent limit, so each run pauses for an approver.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "@langchain/langgraph-sdk";

/** The settings this flow needs, from the environment; a clear message and exit 2 when one is missing. */
function settings() {
  const names = ["FLOW_URL", "FLOW_REQUESTER_KEY", "FLOW_APPROVER_KEY", "FLOW_APPROVER_USER"];
  const missing = names.filter((n) => !process.env[n]);
  if (missing.length) {
    console.error(`flow.mjs: set ${missing.join(", ")} (see the header of tests/js/flow.mjs)`);
    process.exit(2);
  }
  return {
    url: process.env.FLOW_URL,
    requesterKey: process.env.FLOW_REQUESTER_KEY,
    approverKey: process.env.FLOW_APPROVER_KEY,
    approver: process.env.FLOW_APPROVER_USER,
    tenant: process.env.FLOW_TENANT ?? "acme",
  };
}

const env = settings();
// callerOptions.maxRetries 0: a failed request shows as it is, never hidden behind a retry
const requester = new Client({ apiUrl: env.url, apiKey: env.requesterKey, callerOptions: { maxRetries: 0 } });
const approver = new Client({ apiUrl: env.url, apiKey: env.approverKey, callerOptions: { maxRetries: 0 } });

const ESPRESSO = {
  id: "T-8",
  tenant: env.tenant,
  customer_id: "C-1002",
  subject: "Broken espresso machine",
  body: "The espresso machine from order O-5002 stopped working, refund please.",
};
const LAMP = {
  id: "T-JS-LAMP",
  tenant: env.tenant,
  customer_id: "C-1001",
  subject: "Broken lamp",
  body: "The lamp from order O-5016 broke after a week, full refund please.",
};
const TIMEOUT = { timeout: 120_000 };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HASH = /^[0-9a-f]{64}$/;

/** Every part an SDK stream yields, in order. */
async function collect(stream) {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return parts;
}

/** The SDK's HTTPError for ``promise`` carries ``status`` and keel's JSON reason (``detail`` and ``code``). */
async function refused(promise, status) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, status, `expected HTTP ${status}, got: ${err.message}`);
    const body = JSON.parse(err.text);
    assert.equal(typeof body.detail, "string", err.text);
    assert.equal(typeof body.code, "string", err.text);
    return true;
  });
}

/** The plan approval a paused run asks for: keel's interrupt value, as the SDK hands it over. */
function approvalRequest(interrupts, ticket) {
  assert.ok(Array.isArray(interrupts) && interrupts.length === 1, JSON.stringify(interrupts));
  const [intr] = interrupts;
  assert.equal(typeof intr.id, "string");
  const req = intr.value;
  assert.equal(req.type, "plan_approval");
  assert.match(req.plan_hash, HASH);
  assert.equal(req.ticket_id, ticket.id);
  assert.equal(req.customer_id, ticket.customer_id);
  assert.equal(req.plan.length, 1);
  assert.equal(req.plan[0].tool, "issue_refund");
  assert.equal(req.plan[0].decision, "approve");
  assert.ok(Array.isArray(req.policy_checks) && req.policy_checks.length > 0);
  assert.ok(Array.isArray(req.evidence));
  return req;
}

/** SDK ``Checkpoint``: thread_id, checkpoint_ns, checkpoint_id. */
function assertCheckpoint(cp, threadId) {
  assert.equal(cp.thread_id, threadId);
  assert.equal(cp.checkpoint_ns, "");
  assert.equal(typeof cp.checkpoint_id, "string");
}

test("assistants: the support graph is listed and fetchable", TIMEOUT, async () => {
  const found = await requester.assistants.search({ graphId: "support" });
  assert.deepEqual(found.map((a) => a.graph_id), ["support"]);
  const assistant = await requester.assistants.get(found[0].assistant_id);
  assert.equal(assistant.graph_id, "support");
  for (const key of ["assistant_id", "config", "created_at", "updated_at", "metadata", "version", "name"]) {
    assert.ok(key in assistant, `assistant lacks ${key}: ${JSON.stringify(assistant)}`);
  }
});

test("wait: thread -> run -> interrupt -> requester refused -> approver approves -> completed", TIMEOUT, async () => {
  const thread = await requester.threads.create();
  assert.match(thread.thread_id, UUID);
  assert.equal(thread.status, "idle");
  const tid = thread.thread_id;

  const paused = await requester.runs.wait(tid, "support", { input: { ticket: ESPRESSO } });
  assert.equal(paused.status, "awaiting_approval", JSON.stringify(paused).slice(0, 500));
  const request = approvalRequest(paused.__interrupt__, ESPRESSO);
  assert.deepEqual(request.plan[0].args, { order_id: "O-5002", amount_cents: 8999 });

  const waiting = await requester.threads.get(tid);
  assert.equal(waiting.status, "interrupted");
  const pending = Object.values(waiting.interrupts).flat();
  assert.equal(pending.length, 1);
  assert.equal(pending[0].value.plan_hash, request.plan_hash);

  const state = await requester.threads.getState(tid);
  assert.deepEqual(state.next, ["await_approval"]);
  assert.equal(state.values.status, "awaiting_approval");
  assertCheckpoint(state.checkpoint, tid);
  assert.equal(state.tasks.length, 1);
  assert.equal(state.tasks[0].name, "await_approval");
  assert.equal(state.tasks[0].interrupts[0].value.plan_hash, request.plan_hash);

  const decision = { decision: "approve", plan_hash: request.plan_hash, reviewer: env.approver, reason: "ok" };
  // the requester may not approve their own plan: 403, and the thread keeps waiting
  await refused(requester.runs.wait(tid, "support", { command: { resume: decision } }), 403);
  assert.equal((await requester.threads.get(tid)).status, "interrupted");
  const still = await requester.threads.getState(tid);
  assert.deepEqual(still.next, ["await_approval"]);
  assert.equal(still.checkpoint.checkpoint_id, state.checkpoint.checkpoint_id);

  const final = await approver.runs.wait(tid, "support", { command: { resume: decision } });
  assert.equal(final.status, "completed", JSON.stringify(final).slice(0, 500));
  assert.ok(!("__interrupt__" in final));
  assert.equal(final.ticket.id, ESPRESSO.id);
  assert.deepEqual(final.reason_codes, []);

  const done = await requester.threads.get(tid);
  assert.equal(done.status, "idle");
  assert.deepEqual(done.interrupts, {});
  // the same decision again (a client's retry) answers with the first one's run, and runs nothing new;
  // a different decision on the decided plan is refused
  const again = await approver.runs.wait(tid, "support", { command: { resume: decision } });
  assert.equal(again.status, "completed");
  await refused(approver.runs.wait(tid, "support", { command: { resume: { ...decision, decision: "reject" } } }), 409);
  const runs = await requester.runs.list(tid);
  assert.deepEqual(runs.map((r) => r.status), ["success", "success"]);

  const now = await requester.threads.getState(tid);
  assert.deepEqual(now.next, []);
  assert.equal(now.values.status, "completed");
  const history = await requester.threads.getHistory(tid, { limit: 50 });
  assert.ok(history.length > 5, `history has ${history.length} states`);
  assert.equal(history[0].checkpoint.checkpoint_id, now.checkpoint.checkpoint_id, "history is newest first");
  assert.deepEqual(history.at(-1).next, ["__start__"]);
  assert.ok(history.some((s) => s.next.length === 1 && s.next[0] === "await_approval"));
  history.forEach((s, i) => {
    assertCheckpoint(s.checkpoint, tid);
    if (i + 1 < history.length) {
      assert.equal(s.parent_checkpoint.checkpoint_id, history[i + 1].checkpoint.checkpoint_id, `parent of state ${i}`);
    }
  });
  const page = await requester.threads.getHistory(tid, { limit: 2, before: history[1].checkpoint });
  assert.deepEqual(page.map((s) => s.checkpoint.checkpoint_id), history.slice(2, 4).map((s) => s.checkpoint.checkpoint_id));
  const then = await requester.threads.getState(tid, history[1].checkpoint.checkpoint_id);
  assert.deepEqual(then.next, history[1].next);
});

test("stream: values and updates through the interrupt, then the approval streamed", TIMEOUT, async () => {
  const tid = (await requester.threads.create()).thread_id;
  const created = [];
  const parts = await collect(requester.runs.stream(tid, "support", {
    input: { ticket: LAMP }, streamMode: ["values", "updates"], onRunCreated: (meta) => created.push(meta),
  }));

  // metadata first, naming the run (its id is the one Content-Location gave onRunCreated)
  assert.equal(parts[0].event, "metadata");
  assert.match(parts[0].data.run_id, UUID);
  assert.deepEqual(created, [{ run_id: parts[0].data.run_id, thread_id: tid }]);
  const rest = parts.slice(1);
  assert.deepEqual([...new Set(rest.map((p) => p.event))].sort(), ["updates", "values"]);
  // the events carry increasing ids, so a client can rejoin with Last-Event-ID
  const ids = rest.map((p) => Number(p.id));
  assert.ok(ids.every((id, i) => Number.isInteger(id) && (i === 0 || id > ids[i - 1])), JSON.stringify(ids));

  // updates: one {node: update} per step, in graph order, and the interrupt last
  const updates = rest.filter((p) => p.event === "updates").map((p) => p.data);
  assert.ok(updates.every((u) => Object.keys(u).length === 1), JSON.stringify(updates.map(Object.keys)));
  const nodes = updates.map((u) => Object.keys(u)[0]);
  assert.deepEqual(nodes, ["triage", "retrieve_context", "propose_action", "policy_check", "__interrupt__"]);
  const request = approvalRequest(updates.at(-1).__interrupt__, LAMP);
  assert.deepEqual(request.plan[0].args, { order_id: "O-5016", amount_cents: 5400 });

  // values: the whole state after each step; the last one has the interrupt too
  const values = rest.filter((p) => p.event === "values").map((p) => p.data);
  assert.ok(values.every((v) => v.ticket && v.ticket.id === LAMP.id));
  assert.equal(values.at(-1).status, "awaiting_approval");
  assert.equal(values.at(-1).__interrupt__[0].value.plan_hash, request.plan_hash);
  assert.equal(rest.at(-1).event, "values");
  assert.equal((await requester.threads.get(tid)).status, "interrupted");

  // the approver's decision, streamed with one mode given as a string
  const decision = { decision: "approve", plan_hash: request.plan_hash, reviewer: env.approver, reason: "ok" };
  const resumed = await collect(approver.runs.stream(tid, "support", { command: { resume: decision }, streamMode: "updates" }));
  assert.equal(resumed[0].event, "metadata");
  assert.notEqual(resumed[0].data.run_id, parts[0].data.run_id);
  assert.ok(resumed.slice(1).every((p) => p.event === "updates"), JSON.stringify(resumed.map((p) => p.event)));
  const after = resumed.slice(1).map((p) => p.data);
  assert.deepEqual(after.map((u) => Object.keys(u)[0]), ["await_approval", "execute_action", "verify", "complete"]);
  assert.equal(after[0].await_approval.approval.reviewer, env.approver);
  assert.equal(after.at(-1).complete.status, "completed");

  const state = await requester.threads.getState(tid);
  assert.equal(state.values.status, "completed");
  assert.deepEqual(state.next, []);
  const runs = await requester.runs.list(tid);
  assert.deepEqual(runs.map((r) => r.run_id).sort(), [parts[0].data.run_id, resumed[0].data.run_id].sort());
});

// LangGraph Platform's messages-tuple mode: SSE events named "messages" whose data is
// [message, metadata]: a message chunk ({type: "AIMessageChunk" | "ai" | …, content, id}) and the
// metadata of the node that produced it (langgraph_node, tags, …). keel streams the support
// graph's model answers (triage, extract, plan) this way.
test("stream: messages-tuple yields [message, metadata] tuples", TIMEOUT, async () => {
  const tid = (await requester.threads.create()).thread_id;
  const ticket = { ...LAMP, id: "T-JS-MSG", body: "How do I turn on two-factor authentication for my account?" };
  const parts = await collect(requester.runs.stream(tid, "support", { input: { ticket }, streamMode: "messages-tuple" }));
  assert.equal(parts[0].event, "metadata");
  const messages = parts.filter((p) => p.event === "messages");
  assert.ok(messages.length > 0, `no messages events: ${JSON.stringify(parts.map((p) => p.event))}`);
  for (const { data } of messages) {
    assert.ok(Array.isArray(data) && data.length === 2, JSON.stringify(data));
    const [message, metadata] = data;
    assert.equal(typeof message.type, "string");
    assert.ok("content" in message);
    assert.equal(typeof metadata.langgraph_node, "string");
  }
  assert.ok(parts.slice(1).every((p) => p.event === "messages"), JSON.stringify(parts.map((p) => p.event)));
});

// Fields of SDK 1.15's types: `Thread.state_updated_at` (also a sort key of threads.search) and
// the stream's first `metadata` event naming the thread (`MetadataStreamEvent` {run_id, thread_id}).
test("sdk types: Thread.state_updated_at and the metadata event's thread_id", TIMEOUT, async () => {
  const thread = await requester.threads.create();
  assert.equal(typeof thread.state_updated_at, "string", JSON.stringify(thread));
  assert.ok(!Number.isNaN(Date.parse(thread.state_updated_at)), thread.state_updated_at);
  const ticket = { ...LAMP, id: "T-JS-FIELDS", body: "How do I turn on two-factor authentication for my account?" };
  const [first] = await collect(requester.runs.stream(thread.thread_id, "support", { input: { ticket } }));
  assert.equal(first.event, "metadata");
  assert.equal(first.data.thread_id, thread.thread_id, JSON.stringify(first.data));
});

// TODO(issue 10): keel's POST /threads/search sorts by thread_id, status, created_at and updated_at
// only; LangGraph's ThreadSortBy also has "state_updated_at" (the SDK's threads.search({sortBy})),
// which keel refuses with 422 invalid_request. keel computes state_updated_at from the latest
// checkpoint per thread and stores no column to sort on. A `todo` test: it runs and shows the
// gap in the report without failing the suite.
test("sdk types: threads.search sorts by state_updated_at", { ...TIMEOUT, todo: "keel: 422 on sort_by state_updated_at" }, async () => {
  const older = (await requester.threads.create()).thread_id;
  const newer = (await requester.threads.create()).thread_id;
  const found = await requester.threads.search({ sortBy: "state_updated_at", sortOrder: "desc", limit: 2 });
  assert.deepEqual(found.map((t) => t.thread_id), [newer, older]);
});
