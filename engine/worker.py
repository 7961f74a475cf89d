"""Workers: claim queued runs, execute them on the checkpointed graph, record the outcome.

``keel worker`` runs :func:`run_workers` in its own process (any number of processes,
any host, one Postgres); ``keel serve`` on the embedded SQLite store starts the same
loop in a thread. A worker never trusts its own memory across attempts: where a run
starts is decided from the checkpoint store each time it is claimed.

* First attempt: the run's input, ``Command(resume=…)`` or the replayed checkpoint.
* A later attempt (the previous worker died, or a transient failure is retried): if the
  thread's latest checkpoint was written by this run and still has ``next`` tasks, the
  graph continues from it with ``graph.invoke(None, config)``-style resumption, so
  completed nodes are not re-run; side-effecting tools carry idempotency keys, so a
  node that was cut off mid-call does its side effect at most once.

A process holds many runs that mostly wait on models, so what a held run costs is kept
small: one heartbeat loop per process extends the leases of all its runs
(:class:`Heartbeats`), idle threads share one poll of the queue (:class:`PollSlots`) and a
queued run wakes one idle thread, not all; ``keel worker`` puts the queue on a small pool
of its own (``KEEL_WORKER_QUEUE_POOL_SIZE``) for claims and heartbeats, so the lease
protocol never waits behind checkpoint writes; ``KEEL_WORKER_RUN_THREADS`` bounds LangGraph's executor per run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from typing import Any

from langgraph.types import Command

from engine.checkpoints import LeaseLost
from engine.claim_gate import ClaimGate
from engine.correlation import correlation_var
from engine.jsonable import jsonable
from engine.queue import RunQueue
from engine.releases import canary_arm, run_ended
from engine.review import after_dead_letter, after_run, register_deadline, sweep
from engine.run_context import run_context
from engine.runtime import Runtime
from engine.streaming import EventsHandler, ServerStream, graph_modes, stored_events
from engine.tracing import NodeSpans, record_run_end, run_outcome, run_span
from engine.versions import record_run_versions
from keel import metrics
from keel.errors import is_retryable

__all__ = ["Heartbeats", "PollSlots", "Worker", "run_workers", "start_embedded_worker"]


def _discard(events: list[tuple[str, Any]]) -> None:
    """The event store of a run nobody streams (``wait``, ``create``)."""

log = logging.getLogger("keel.worker")


CANCEL_NOTICE_S = 1.0
"""How often the heartbeat loop reads its runs' cancel flags (and notices a lost lease)."""

GATE_RETRY_S = 0.1
"""How soon a thread the claim gate held back asks it again."""

GATE_RUN_SHARE = 0.6
"""Share of the pack's wall-clock cap that a run should take at most, claim to end: longer,
and the claim gate lowers the runs a process may hold (:mod:`engine.claim_gate`)."""


class _Lease:
    """One claimed run held by a :class:`Heartbeats` loop: flags cancellation and lease loss."""

    def __init__(self, beats: Heartbeats, run_id: str, worker_id: str) -> None:
        self.beats, self.run_id, self.worker_id = beats, run_id, worker_id
        self.cancelled = threading.Event()
        self.lost = threading.Event()

    def check(self) -> None:
        """Heartbeat this run now."""
        self.beats.beat([self], extend=True)

    def keep_alive(self) -> None:
        """Between graph steps: extend this run's lease from the worker's own thread if the
        shared loop is late (a starved process on a loaded machine); else nothing."""
        if time.monotonic() - self.beats.extended_at > self.beats.lease_s / 2:
            self.check()


class Heartbeats:
    """One heartbeat loop for every run a worker process holds, not a thread per run.

    A run waiting on a model costs its worker nothing but a slot here: every
    ``CANCEL_NOTICE_S`` one thread reads the cancel flag and owner of all held runs (one
    statement), and every ``lease_s / 3`` it extends all their leases (one more); a run
    whose lease was taken over is flagged ``lost``, a cancelled one ``cancelled``. The
    thread exists only while runs are held."""

    def __init__(self, queue: RunQueue, lease_s: float, *, notice_s: float = CANCEL_NOTICE_S) -> None:
        self.queue, self.lease_s = queue, lease_s
        self.notice_s = min(notice_s, lease_s / 3)
        self._held: dict[tuple[str, str], _Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._extended = time.monotonic()

    @property
    def extended_at(self) -> float:
        """When the loop last extended every held lease (``time.monotonic()``)."""
        return self._extended

    @property
    def held(self) -> int:
        """Runs held now."""
        return len(self._held)

    @contextmanager
    def hold(self, run_id: str, worker_id: str) -> Iterator[_Lease]:
        """Keep ``run_id``'s lease (owned by ``worker_id``) alive while the block runs."""
        lease = _Lease(self, run_id, worker_id)
        key = (run_id, worker_id)
        with self._lock:
            self._held[key] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="keel-heartbeats", daemon=True)
                self._thread.start()
        try:
            yield lease
        finally:
            with self._lock:
                if self._held.get(key) is lease:
                    del self._held[key]

    def beat(self, leases: list[_Lease] | None = None, *, extend: bool | None = None) -> None:
        """Extend (when due, or ``extend``) the leases of ``leases`` (default: every held run)
        and flag the lost and cancelled ones."""
        full = leases is None
        if leases is None:
            with self._lock:
                leases = list(self._held.values())
        if not leases:
            return
        now = time.monotonic()
        if extend is None:
            extend = now - self._extended >= self.lease_s / 3 - self.notice_s / 2
        alive = self.queue.heartbeat_many([(x.run_id, x.worker_id) for x in leases],
                                          self.lease_s if extend else None)
        if extend and full:  # once done: a beat stuck in a slow database is not an extension
            self._extended = now
        for x in leases:
            key = (x.run_id, x.worker_id)
            if key not in alive:
                x.lost.set()
            elif alive[key]:
                x.cancelled.set()

    def _loop(self) -> None:
        self._extended = time.monotonic()  # the claim just set the first lease
        while True:
            time.sleep(self.notice_s)
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a DB hiccup: the next beat retries; the lease is 3 beats long
                log.warning("heartbeat of %d run(s) failed", self.held, exc_info=True)


class PollSlots:
    """One poll of the queue per ``every_s`` for all the idle worker threads of a process.

    One idle thread at a time is the poller: it waits for the next slot, then claims. The
    others wait for a notification (a queued run wakes one of them) and only look again
    after ``idle_s`` to see whether the poller role is free. A poller that claimed a run
    leaves the role, and its claim wakes one more idle thread (``Worker.run_forever``),
    which takes it over."""

    def __init__(self, every_s: float, idle_s: float = 10.0) -> None:
        self.every_s = every_s
        self.idle_s = max(idle_s, every_s)
        self._next = 0.0
        self._poller: int | None = None
        self._lock = threading.Lock()
        self.taken = 0
        """Slots taken (polls made) so far."""

    def wait_s(self) -> float:
        """How long the calling idle thread waits: until the next slot if it is (or now
        becomes) the poller, else ``idle_s``."""
        me = threading.get_ident()
        with self._lock:
            if self._poller is None:
                self._poller = me
            if self._poller != me:
                return self.idle_s
            return min(self.every_s, max(0.01, self._next - time.monotonic()))

    def take(self) -> bool:
        """The poller takes the slot if it is due (and leaves the role to claim)."""
        with self._lock:
            now = time.monotonic()
            if self._poller != threading.get_ident() or now < self._next:
                return False
            self._next = now + self.every_s
            self._poller = None
            self.taken += 1
            return True

    def leave(self) -> None:
        """The calling thread stops being the poller (a notification woke it to claim)."""
        with self._lock:
            if self._poller == threading.get_ident():
                self._poller = None


class Worker:
    """Executes runs from a :class:`RunQueue` with a runtime's graphs (each run with the
    context its graph declares, built by the runtime)."""

    def __init__(
        self,
        runtime: Runtime,
        queue: RunQueue,
        *,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        max_lease_expiries: int | None = None,
        heartbeats: Heartbeats | None = None,
        polls: PollSlots | None = None,
        claims: RunQueue | None = None,
        gate: ClaimGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_lease_expiries = (runtime.settings.worker_max_lease_expiries if max_lease_expiries is None
                                   else max_lease_expiries)
        """Lease expiries after which a run is dead-lettered (``KEEL_WORKER_MAX_LEASE_EXPIRIES``)."""
        self.polls = polls or PollSlots(poll_s)
        """When this worker's process may poll the queue next (``run_workers``: shared)."""
        self.claims = claims or queue
        """Where this worker claims runs and heartbeats them: ``keel worker`` gives it the queue
        on a small pool of its own (the lease protocol never waits behind checkpoint writes,
        stream events and outcomes, which stay on ``queue``)."""
        self.heartbeats = heartbeats or Heartbeats(self.claims, lease_s)
        """Keeps the leases of the runs this worker holds (``run_workers``: one per process);
        the worker reads its flags between graph steps (a cancel is noticed within a step
        and ``CANCEL_NOTICE_S``)."""
        self.gate = gate
        """Holds new claims back while the process's CPU cannot serve the runs it holds
        (:mod:`engine.claim_gate`; ``run_workers``: one per process, None: never)."""

    primary = True
    """Sweeps approval deadlines and webhooks (one thread per process, ``run_workers``)."""

    def idle_wait(self) -> float:
        """How long an idle loop waits for a notification before it may poll the queue.

        Polling finds what no notification announces: runs whose backoff or
        ``after_seconds`` elapsed, and leases of dead workers that expired. The threads of
        a process share one poll every ``poll_s`` (:class:`PollSlots`), whichever is idle:
        hundreds of idle threads do not each query the queue every second."""
        return self.polls.wait_s()

    def _idle(self, seen: int, stop: threading.Event) -> None:
        """Sleep until a notification (a run to claim) or this thread's turn to poll."""
        while not stop.is_set():
            if self.queue.wait_change(seen, self.idle_wait()) != seen:
                self.polls.leave()
                return
            if self.polls.take():
                return
        self.polls.leave()

    # -- loop --------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        """Claim and execute runs until ``stop`` is set."""
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            self._sweep_if_due()
            if self.gate is not None and not self.gate.state(self.heartbeats.held).open:
                # the held runs already wait for CPU: a queued run's wall-clock cap has not
                # started, so it waits in the queue (for this or a less loaded worker)
                stop.wait(GATE_RETRY_S)
                continue
            seen = self.queue.version()
            try:
                did = self.run_one()
            except Exception as e:
                if is_retryable(e):  # the database is restarting or away: one line per attempt
                    log.warning("worker %s: claim failed: %s: %s", self.worker_id, type(e).__name__,
                                " ".join(str(e).split())[:300])
                else:
                    log.exception("worker %s: claim failed", self.worker_id)
                did = False
                stop.wait(self.poll_s)
            if did:
                # more may be claimable (found by a poll, or queued while this thread claimed):
                # one more idle thread looks; it claims or sleeps again, a chain, not a stampede
                self.queue.notify()
            else:
                self._idle(seen, stop)
        log.info("worker %s stopped", self.worker_id)

    _next_sweep = 0.0

    def _sweep_if_due(self) -> None:
        """Every ``KEEL_REVIEW_SWEEP_S``: expired approval deadlines and due webhooks
        (:func:`engine.review.sweep`; safe on any number of workers at once)."""
        if not self.primary or time.monotonic() < self._next_sweep:  # one sweeper thread per process
            return
        self._next_sweep = time.monotonic() + self.runtime.settings.review_sweep_s
        try:
            sweep(self.runtime, self.queue, self.worker_id)
        except Exception as e:  # noqa: BLE001 - the next sweep retries
            log.warning("worker %s: review sweep failed: %s: %s", self.worker_id, type(e).__name__, str(e)[:300])

    _crons_at = 0.0

    def _fire_crons(self) -> None:
        """Queue the runs of due cron ticks (:mod:`engine.crons`, exactly once per tick across
        workers), at most about once a second per worker."""
        now = time.monotonic()
        if now - self._crons_at < 1.0:
            return
        self._crons_at = now
        try:
            self.runtime.crons.fire_due(self.queue)
        except Exception:  # noqa: BLE001 - the next pass retries; runs go on meanwhile
            log.warning("worker %s: firing crons failed", self.worker_id, exc_info=True)

    def run_one(self) -> bool:
        """Claim one run and execute it; False when nothing was runnable."""
        self._fire_crons()
        claim = self.claims.claim_next(self.worker_id, self.lease_s, max_lease_expiries=self.max_lease_expiries)
        for dead in claim.dead_lettered:
            self._audit_dead_letter(dead)
        run = claim.run
        if run is None:
            return bool(claim.dead_lettered)
        token = correlation_var.set(run["correlation_id"])
        try:
            with run_span(self.runtime, run, self.worker_id):  # one trace from the request that queued it
                self.execute(run)
        finally:
            correlation_var.reset(token)
        return True

    # -- one run -------------------------------------------------------------------------
    def _config(self, run: dict[str, Any]) -> dict[str, Any]:
        payload = run["payload"]
        user = payload.get("config") or {}
        # a client's own ``configurable`` keys are not passed on: nodes read identity and
        # clock from the run config, and only keel may set those
        conf: dict[str, Any] = dict(
            thread_id=run["thread_id"],
            requester=run["requester"] or run["created_by"],
            actor=run["created_by"],
            correlation_id=run["correlation_id"],
            # the run's wall-clock cap counts from here at the latest: time spent queued for a
            # retry, behind a dead worker's lease or dead-lettered is not run time
            attempt_started_at=datetime.now(UTC).isoformat(),
        )
        cfg: dict[str, Any] = {
            "configurable": conf,
            # run_id + lease_owner fence the checkpoint writes (engine.checkpoints.LeaseLost): a
            # worker whose lease was taken over can no longer write on the thread
            "metadata": {"run_id": run["run_id"], "correlation_id": run["correlation_id"], "tenant": run["tenant"],
                         "lease_owner": self.worker_id},
            "tags": [f"tenant:{run['tenant']}", f"correlation:{run['correlation_id']}"],
            "callbacks": [NodeSpans(run["graph_id"])],  # a span per node (engine.tracing)
        }
        if isinstance(user.get("recursion_limit"), int):
            cfg["recursion_limit"] = user["recursion_limit"]
        if self.runtime.settings.worker_run_threads is not None:
            # LangGraph gives every run an executor of its own (up to 6 threads here: a step's
            # parallel tasks, its background checkpoint writes); bounded, a held run costs fewer
            cfg["max_concurrency"] = self.runtime.settings.worker_run_threads
        return cfg

    def _start_input(self, graph: Any, run: dict[str, Any], cfg: dict[str, Any]) -> tuple[bool, Any, dict[str, Any]]:
        """``(already_done, input, config)`` for this attempt, decided from the checkpoint store."""
        # only a run claimed before (a dead worker, an expired lease, a transient failure,
        # an admin retry) can have progressed; on its first claim there is nothing to read
        snap = graph.get_state({"configurable": {"thread_id": run["thread_id"]}}) if run["attempts"] > 1 else None
        if snap is not None and snap.metadata and snap.metadata.get("run_id") == run["run_id"]:
            # done only at an interrupt or with nothing left: a step whose task wrote its
            # results but whose next checkpoint was lost (the database went away between
            # the two) shows no ``next`` yet still has that task pending; resuming applies
            # its saved writes and goes on
            if snap.interrupts or (not snap.next and not snap.tasks):
                return True, None, cfg
            log.info("run %s: resuming from checkpoint %s (next %s)", run["run_id"],
                     snap.config["configurable"].get("checkpoint_id"), list(snap.next))
            return False, None, cfg
        payload = run["payload"]
        if run["kind"] == "resume":
            cmd = payload["command"]
            if cmd.get("as_node") is not None:  # keel's own decision (engine.review: a deadline escalates)
                graph.update_state(cfg, cmd.get("update"), as_node=cmd["as_node"])
                return False, None, cfg
            kwargs: dict[str, Any] = {}
            if "resume" in cmd:
                kwargs["resume"] = cmd["resume"]
            if cmd.get("update") is not None:
                kwargs["update"] = cmd["update"]
            if cmd.get("goto") is not None:
                kwargs["goto"] = cmd["goto"]
            return False, Command(**kwargs), cfg
        if run["kind"] == "replay":
            cfg = {**cfg, "configurable": {**cfg["configurable"], "checkpoint_id": payload["checkpoint_id"]}}
            return False, None, cfg
        return False, payload.get("input"), cfg

    def execute(self, run: dict[str, Any]) -> None:
        """Run one claimed run to its end (or to a retry, cancellation or lost lease)."""
        rid = run["run_id"]
        t0 = time.monotonic()
        log.info("run %s (thread %s, graph %s, attempt %d) started", rid, run["thread_id"], run["graph_id"], run["attempts"])
        store = bool(run["stream_mode"])
        stream: ServerStream | None = None
        with self.heartbeats.hold(rid, self.worker_id) as lease:  # the process's one heartbeat loop
            try:
                cfg = self._config(run)
                # a factory graph of langgraph.json is built from the run's config, per run
                graph = self.runtime.graph(run["graph_id"], config=cfg)
                arm = canary_arm(self.runtime, run)  # an active canary's arm for this run (engine.releases)
                record_run_versions(self.runtime, run, graph,  # graph, pack, prompts, tools, routing
                                    extra=arm.versions if arm is not None else None)
                done, inp, cfg = self._start_input(graph, run, cfg)
                if not done:
                    # the requested modes as LangGraph Server streams them (engine.streaming)
                    stream = ServerStream(run["stream_mode"], stored_events(self.queue, rid) if store else _discard,
                                          subgraphs=bool(run["payload"].get("stream_subgraphs")))
                    # subgraph chunks only when asked for: LangGraph then runs a step's single task
                    # in this thread, where with ``subgraphs=True`` every task and a stream waiter
                    # take threads of the run's own executor (about three more threads per run)
                    sub = stream.subgraphs
                    if "events" in run["stream_mode"]:
                        cfg = {**cfg, "callbacks": [*cfg.get("callbacks", []), EventsHandler(stream)]}
                    kwargs = {k: run["payload"][k] for k in ("interrupt_before", "interrupt_after") if run["payload"].get(k)}
                    context = run_context(self.runtime, run["graph_id"], run["payload"].get("context"))
                    if arm is not None:
                        context = arm.context(self.runtime, context)  # the candidate's parts on its arm
                    for item in graph.stream(inp, cfg, stream_mode=graph_modes(run["stream_mode"]),
                                             subgraphs=sub, context=context, **kwargs):
                        ns, mode, chunk = item if sub else ((), *item)
                        stream.chunk(ns, mode, chunk)
                        lease.keep_alive()  # a backstop: the heartbeat loop extends the lease
                        if lease.cancelled.is_set() or lease.lost.is_set():
                            break
                    stream.flush()
                    if lease.lost.is_set():
                        log.warning("run %s: lease lost; leaving the outcome to the new owner", rid)
                        record_run_end(run["graph_id"], "lease_lost")
                        return
                    if lease.cancelled.is_set():
                        thread_status, interrupts = self._outcome(graph, run)
                        self.queue.finish(run, self.worker_id, "interrupted", thread_status, "cancelled",
                                          interrupts=interrupts)
                        log.info("run %s cancelled", rid)
                        record_run_end(run["graph_id"], "cancelled")
                        return
                # one read of the final state for the outcome, the hooks and the outcome label
                # (each used to read the latest checkpoint again: three reads a run)
                thread_status, interrupts, values = self._final_state(graph, run)
                deadline = register_deadline(self.runtime, run, interrupts)  # before the end wakes anyone
                if self.queue.finish(run, self.worker_id, "success", thread_status, interrupts=interrupts):
                    after_run(self.runtime, self.queue, run, thread_status, interrupts,  # deadlines, webhooks, feedback
                              values=values, deadline=deadline)
                    outcome = run_outcome(graph, run, thread_status, values=values)
                    record_run_end(run["graph_id"], outcome)
                    run_ended(self.runtime, run, outcome, graph)  # canary metrics, shadow replay (engine.releases)
                log.info("run %s finished in %.3fs", rid, time.monotonic() - t0)
                if self.gate is not None:
                    self.gate.run_ended(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is recorded on the run
                msg = f"{type(e).__name__}: {e}"[:2000]
                if lease.lost.is_set() or isinstance(e, LeaseLost):  # the run is another worker's now
                    log.warning("run %s failed after losing its lease: %s", rid, msg)
                    record_run_end(run["graph_id"], "lease_lost")
                    return
                if store:
                    try:
                        if stream is not None:
                            stream.flush()
                        self.queue.append_events(rid, self.queue.next_event_seq(rid), [("error", {"error": type(e).__name__, "message": str(e)[:2000]})])
                    except Exception:
                        log.warning("run %s: could not store error event", rid, exc_info=True)
                if is_retryable(e):  # by type (keel.errors): a retryable KeelError, the database away
                    status = self.queue.retry_later(run, self.worker_id, msg, base=self.backoff_base, cap=self.backoff_cap)
                    log.warning("run %s: transient failure (%s); now %s", rid, msg, status)
                    record_run_end(run["graph_id"], "dead" if status == "dead" else "retry")
                    if status == "dead":
                        self._audit_dead_letter(run, reload=True)
                else:
                    if self.queue.finish(run, self.worker_id, "error", "error", msg):
                        run_ended(self.runtime, run, "error")
                    record_run_end(run["graph_id"], "error")
                    log.exception("run %s failed", rid)

    def _audit_dead_letter(self, run: dict[str, Any], *, reload: bool = False) -> None:
        """An audit row for a run that went to the dead letters, with the reason
        (``reload``: ``run`` is the claimed row; read the dead one first).

        Written after the run row (another transaction: the audit chain has its own); a
        crash in between leaves the reason on the run row only (``dead_reason``)."""
        try:
            if reload:
                run = self.queue.get_run_any(run["run_id"]) or run
            data = {"event": "dead_lettered", "run_id": run["run_id"], "reason": run.get("dead_reason"),
                    "attempts": run.get("attempts"), "retries": run.get("retries"),
                    "lease_expiries": run.get("lease_expiries"), "last_worker": run.get("last_worker"),
                    "error": (run.get("error") or "")[:500]}
            self.runtime.audit.append(run["tenant"], "run_finished", actor="system", thread_id=run["thread_id"],
                                      correlation_id=run.get("correlation_id"), data=data)
            metrics.DEAD_LETTERS.labels(workflow=run.get("graph_id") or "-", reason=run.get("dead_reason") or "-").inc()
            after_dead_letter(self.runtime, run)
            run_ended(self.runtime, run, "dead")
        except Exception:  # noqa: BLE001 - the run row already holds the reason
            log.warning("run %s: could not audit its dead-lettering", run["run_id"], exc_info=True)

    @staticmethod
    def _final_state(graph: Any, run: dict[str, Any]) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """The thread's status after the run, its pending interrupts (``[{"value", "id"}]``)
        and its state values (JSON-able), from one read of the latest checkpoint."""
        snap = graph.get_state({"configurable": {"thread_id": run["thread_id"]}})
        interrupts = [jsonable(i) for i in (snap.interrupts or ())]
        values = jsonable(dict(snap.values)) if snap.values else {}
        return ("interrupted" if (snap.interrupts or snap.next) else "idle"), interrupts, values

    @classmethod
    def _outcome(cls, graph: Any, run: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """The thread's status after the run, and its pending interrupts (``[{"value", "id"}]``)."""
        snap = graph.get_state({"configurable": {"thread_id": run["thread_id"]}})
        interrupts = [jsonable(i) for i in (snap.interrupts or ())]
        return ("interrupted" if (snap.interrupts or snap.next) else "idle"), interrupts

    @classmethod
    def _thread_status(cls, graph: Any, run: dict[str, Any]) -> str:
        return cls._outcome(graph, run)[0]


def run_workers(
    runtime: Runtime,
    queue: RunQueue,
    *,
    concurrency: int = 1,
    stop: threading.Event | None = None,
    **worker_kwargs: Any,
) -> list[threading.Thread]:
    """Start ``concurrency`` worker threads; they stop when ``stop`` is set. They share one
    heartbeat loop (:class:`Heartbeats`): a held run costs no thread of its own."""
    stop = stop or threading.Event()
    queue.start_listener()  # Postgres: a run queued by any server wakes an idle worker at once
    threads = []
    if "heartbeats" not in worker_kwargs:
        worker_kwargs = {**worker_kwargs, "heartbeats": Heartbeats(worker_kwargs.get("claims") or queue,
                                                                   worker_kwargs.get("lease_s", 30.0))}
    if "polls" not in worker_kwargs:
        worker_kwargs = {**worker_kwargs, "polls": PollSlots(worker_kwargs.get("poll_s", 0.5))}
    settings = runtime.settings
    if "gate" not in worker_kwargs and settings.worker_claim_gate_lag_ms > 0:
        # runs should end well inside the pack's wall-clock cap, which starts at the claim
        cap = getattr(getattr(getattr(runtime, "policy", None), "budgets", None), "wall_clock_s", None)
        worker_kwargs = {**worker_kwargs, "gate": ClaimGate(
            max_lag_ms=settings.worker_claim_gate_lag_ms, floor=settings.worker_claim_gate_floor,
            target_run_s=cap * GATE_RUN_SHARE if cap else None).start(stop)}
    for i in range(max(1, concurrency)):
        w = Worker(runtime, queue, **worker_kwargs)
        w.primary = i == 0
        t = threading.Thread(target=w.run_forever, args=(stop,), name=f"keel-worker-{i}", daemon=True)
        t.start()
        threads.append(t)
    return threads


def start_embedded_worker(runtime: Runtime, queue: RunQueue, *, concurrency: int = 1, **kw: Any) -> threading.Event:
    """The in-process worker of the embedded ``keel serve``; set the returned event to stop it."""
    stop = threading.Event()
    kw.setdefault("poll_s", 0.25)
    run_workers(runtime, queue, concurrency=concurrency, stop=stop, **kw)
    return stop
