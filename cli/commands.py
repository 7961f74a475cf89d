"""``keel run|demo|approvals|approve|reject|history|replay|prune``: registered into keel's CLI.

Every command reports bad input as one clear line on standard error (:class:`CliError`)
and a non-zero exit status, never a stack trace. Each builds its own
:class:`~engine.runtime.Runtime` from the settings and closes it when done; graphs run
with the context the runtime builds (``context=rt.context()``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from langgraph.types import Command
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.approvals import approval_rules, pending_approval, validate_resume
from engine.batch import read_tickets, run_tickets, stderr_progress
from engine.registry import GraphConfigError, graph_ids, use_config
from engine.retention import prune
from engine.review import record_decision
from engine.runtime import DEMO_FIXTURES, DEMO_NOW, DEMO_TICKETS, Runtime
from guards.approvals import ApprovalError, decider_refusal
from keel.config import Settings, get_settings
from keel.errors import InvalidInput
from tools.fixtures import parse_fixtures_text

__all__ = ["register", "CliError", "DEMO_USERS"]


DEMO_USERS = {"demo-requester": "requester", "demo-approver": "approver", "demo-admin": "admin"}
"""Principals ``keel demo`` creates in the demo tenant."""


class CliError(InvalidInput):
    """A user-facing error: printed as one line, exit status 2."""


def _parse_now(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--now: not an ISO-8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _settings(**overrides: Any) -> Settings:
    base = get_settings()
    return base.model_copy(update={k: v for k, v in overrides.items()})


def _runtime(**overrides: Any) -> Runtime:
    return Runtime(_settings(**overrides))


def _load_fixtures(rt: Runtime, path: Path) -> tuple[str | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"{path}: cannot read fixtures ({e.strerror})") from None
    parsed = parse_fixtures_text(text)
    errors = [f"{path}:{e.line}: {e.message}" for e in parsed.errors]
    if parsed.fixtures is None:
        return None, errors
    rt.backoffice.load_fixtures(parsed.fixtures)
    return parsed.fixtures.tenant, errors


# -- keel run ----------------------------------------------------------------------------
def _use_graphs(args: argparse.Namespace, needed: str) -> None:
    """Load the graphs of ``langgraph.json`` (``--config``); ``needed`` must be one of them."""
    try:
        path = use_config(getattr(args, "config", None))
    except GraphConfigError as e:
        raise CliError(str(e)) from None
    if needed not in graph_ids():
        raise CliError(f"{path} names no graph {needed!r} (it has: {', '.join(graph_ids()) or 'none'})")


def cmd_run(args: argparse.Namespace) -> int:
    """Batch contract: every ticket through the graph on a fresh embedded store."""
    now = _parse_now(args.now)
    if not Path(args.tickets).is_file():
        raise CliError(f"{args.tickets}: no such tickets file")
    _use_graphs(args, "support")
    with tempfile.TemporaryDirectory(prefix="keel-run-") as tmp:
        rt = _runtime(database_url=None, data_dir=Path(tmp), now=now, fixtures=None)
        try:
            tenant, errors = _load_fixtures(rt, Path(args.fixtures))
            for e in errors:
                print(e, file=sys.stderr)
            if tenant is None:
                print("keel run: the fixtures file is not valid JSON; nothing was run", file=sys.stderr)
                return 2
            tickets, ticket_errors = read_tickets(Path(args.tickets))
            for e in ticket_errors:
                print(e, file=sys.stderr)
            out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
            try:
                t0 = time.perf_counter()
                rows = run_tickets(rt, tickets, requester="keel-batch", out=out, progress=stderr_progress)
                print(f"keel run: {len(rows)} tickets in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
            finally:
                if out is not sys.stdout:
                    out.close()
        finally:
            rt.close()
    return 1 if (errors or ticket_errors) else 0


# -- keel demo ---------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Load the bundled demo, run its tickets, print a summary table."""
    settings = _settings()
    rt = _runtime(now=settings.now or DEMO_NOW)
    err = Console(stderr=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=140)  # piped or captured: don't squeeze the table into 80 columns
    prog = sys.argv[0] if sys.argv[0].endswith("/keel") else "keel"
    prog = os.path.relpath(prog) if os.path.isabs(prog) and prog.startswith(os.getcwd()) else prog
    try:
        tenant, errors = _load_fixtures(rt, settings.fixtures or DEMO_FIXTURES)
        if tenant is None:
            raise CliError("; ".join(errors))
        for user, role in DEMO_USERS.items():
            rt.principals.upsert(tenant, user, role)  # type: ignore[arg-type]
        tickets, terrs = read_tickets(Path(args.tickets) if args.tickets else DEMO_TICKETS)
        for e in errors + terrs:
            err.print(f"[yellow]{e}[/]")
        t0 = time.perf_counter()
        with Progress(TextColumn("running tickets"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("tickets", total=len(tickets))
            rows = run_tickets(rt, tickets, requester="demo-requester",
                               progress=lambda done, total, row: bar.update(task, completed=done))
        elapsed = time.perf_counter() - t0
        table = Table(title=f"keel demo: {len(rows)} tickets, tenant {tenant}, clock {rt.now().isoformat()}")
        for col in ("ticket", "route", "status", "action", "decision", "reason"):
            table.add_column(col)
        colors = {"completed": "green", "awaiting_approval": "yellow", "escalated": "red", "rejected": "magenta"}
        for r in rows:
            a = r["actions"][0] if r["actions"] else None
            action = f"{a['tool']} {json.dumps(a['args'], ensure_ascii=False)}" if a else "-"
            table.add_row(r["ticket_id"], r["route"], f"[{colors.get(r['status'], 'white')}]{r['status']}[/]",
                          action, (a or {}).get("decision") or "-", ", ".join(r["reason_codes"]) or "-")
        out.print(table)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "awaiting_approval", "escalated")}
        out.print(f"{counts['completed']} completed, {counts['awaiting_approval']} awaiting approval, "
                  f"{counts['escalated']} escalated in {elapsed:.2f}s (data in {rt.settings.data_dir})")
        waiting = [r for r in rows if r["status"] == "awaiting_approval"]
        if waiting:
            out.print("\nRuns waiting for a human approval:")
            for r in waiting:
                out.print(f"  {r['ticket_id']}: thread {r['thread_id']}")
            rules = approval_rules(rt)  # the demo user the pack in force lets decide
            decider = next((u for u, role in DEMO_USERS.items() if decider_refusal(
                rules, role=role, reviewer=u, requester="demo-requester") is None), "demo-approver")
            out.print(f"\nReview them with [bold]{prog} approvals[/], then approve or reject one, e.g.:")
            out.print(f"  {prog} approve {waiting[0]['thread_id']} --as {decider}")
            out.print(f"  {prog} reject {waiting[0]['thread_id']} --as {decider} --reason 'not eligible'")
        return 0
    finally:
        rt.close()


# -- approvals ---------------------------------------------------------------------------
def cmd_approvals(args: argparse.Namespace) -> int:
    """List pending approvals with plan, evidence and policy checks; with ``--as USER``,
    whether that user may decide each one under the policy pack's ``[approvals]``."""
    rt = _runtime()
    try:
        rules = approval_rules(rt)
        rows = rt.threads.list(tenant=args.tenant, status="awaiting_approval", limit=args.limit)
        items = []
        for row in rows:
            req = pending_approval(rt, row["thread_id"])
            if req is None:
                continue
            items.append({**req, **_may_decide(rt, args.as_user, req)} if args.as_user else req)
        if args.json:
            print(json.dumps(items, indent=2, ensure_ascii=False))
            return 0
        if not items:
            print("no pending approvals")
            return 0
        print(f"decided by role {' or '.join(rules.approver_roles)} (policy {rt.policy.version})"
              f"{', never by the requester' if rules.separation_of_duties else ''}\n")
        for req in items:
            print(f"thread {req['thread_id']}  tenant {req['tenant']}  ticket {req['ticket_id']}  requested by {req['requester']}")
            if "can_decide" in req:
                print(f"  {args.as_user} {'may decide' if req['can_decide'] else 'may not decide (' + req['refusal'] + ')'}")
            print(f"  plan {req['plan_hash'][:16]}… (policy {req['policy_version']})")
            for i, a in enumerate(req["plan"]):
                print(f"  [{i}] {a['tool']} {json.dumps(a['args'], ensure_ascii=False)} -> {a['decision']}")
            for c in req["policy_checks"]:
                print(f"      {c['rule']}: {c['result']}{' (' + c['reason_code'] + ')' if c.get('reason_code') else ''} {c.get('detail', '')}")
            for ev in req["evidence"]:
                if ev.get("tool"):
                    print(f"  evidence {ev['tool']}({json.dumps(ev.get('args'), ensure_ascii=False)}): "
                          f"{'ok' if ev.get('ok') else ev.get('error')}")
            print()
        return 0
    finally:
        rt.close()


def _may_decide(rt: Runtime, user: str, request: dict[str, Any]) -> dict[str, Any]:
    """Whether ``user`` may decide ``request`` under the pack in force, and if not, why."""
    who = rt.principals.get(request["tenant"], user)
    if who is None:
        return {"can_decide": False, "refusal": "unknown_user"}
    refused = decider_refusal(approval_rules(rt), role=who.role, reviewer=who.user_id, requester=request.get("requester"))
    return {"can_decide": refused is None, "refusal": refused.code if refused else None}


def _decide(args: argparse.Namespace, decision: str) -> int:
    rt = _runtime()
    try:
        request = pending_approval(rt, args.thread)
        if request is None:
            raise CliError(f"thread {args.thread}: no approval is pending")
        principal = rt.principals.get(request["tenant"], args.as_user)
        if principal is None:
            raise CliError(f"user {args.as_user!r} is not known in tenant {request['tenant']!r}")
        payload: dict[str, Any] = {"decision": decision, "plan_hash": args.plan_hash or request["plan_hash"],
                                   "reason": args.reason or ""}
        if decision == "approve" and args.edit:
            payload["edits"] = [_parse_edit(e) for e in args.edit]
        try:
            value = validate_resume(rt, args.thread, principal, payload)
        except ApprovalError as e:
            raise CliError(f"refused ({e.code}): {e.message}") from None
        state = rt.graph("support").invoke(Command(resume=value), {"configurable": {"thread_id": args.thread}},
                                           context=rt.context("support"))
        record_decision(rt, request["tenant"], args.thread, state)  # a labelled example (engine.feedback)
        print(json.dumps({"thread_id": args.thread, "status": state.get("status"),
                          "reason_codes": state.get("reason_codes", []),
                          "actions": state.get("actions", [])}, ensure_ascii=False))
        return 0
    finally:
        rt.close()


def _parse_edit(text: str) -> dict[str, Any]:
    """``INDEX:field=value`` → ``{"index": INDEX, "args": {field: value}}`` (value as JSON if it parses)."""
    try:
        idx, rest = text.split(":", 1)
        key, raw = rest.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        return {"index": int(idx), "args": {key: value}}
    except ValueError:
        raise CliError(f"--edit {text!r}: expected INDEX:field=value, e.g. 0:amount_cents=4000") from None


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a pending plan as USER."""
    return _decide(args, "approve")


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject a pending plan as USER."""
    return _decide(args, "reject")


# -- history and replay ------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    """List a thread's checkpoints, newest first."""
    rt = _runtime()
    try:
        snaps = list(rt.graph("support").get_state_history({"configurable": {"thread_id": args.thread}}))
        if not snaps:
            raise CliError(f"thread {args.thread}: no checkpoints")
        for s in snaps:
            cp = s.config["configurable"]["checkpoint_id"]
            step = (s.metadata or {}).get("step")
            print(f"{cp}  step {step!s:>3}  {s.created_at}  status={s.values.get('status', '-'):<18} next={','.join(s.next) or '-'}")
        return 0
    finally:
        rt.close()


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-run a thread from a checkpoint (``--fork``: on a new branch after an empty update)."""
    rt = _runtime()
    try:
        graph = rt.graph("support")
        config = {"configurable": {"thread_id": args.thread, "checkpoint_id": args.from_checkpoint}}
        snap = graph.get_state(config)
        if not snap.values and not snap.next:
            raise CliError(f"thread {args.thread}: no checkpoint {args.from_checkpoint}")
        if args.fork:
            config = graph.update_state(config, None)
        state = graph.invoke(None, config, context=rt.context("support"))
        print(json.dumps({"thread_id": args.thread, "from": args.from_checkpoint, "status": state.get("status"),
                          "reason_codes": state.get("reason_codes", []), "actions": state.get("actions", [])},
                         ensure_ascii=False))
        return 0
    finally:
        rt.close()


# -- retention ---------------------------------------------------------------------------
def cmd_prune(args: argparse.Namespace) -> int:
    """Delete checkpoint history of finished runs (``engine/retention.py``); never a waiting run's."""
    if args.ttl is None and not args.keep_latest:
        raise CliError("give --ttl DAYS, --keep-latest or both")
    if args.ttl is not None and args.ttl < 0:
        raise CliError("--ttl: DAYS must not be negative")
    rt = _runtime()
    try:
        report = prune(rt, ttl_days=args.ttl, keep_latest=args.keep_latest, dry_run=args.dry_run, tenant=args.tenant)
        for line in report.lines():
            print(("dry run: " if args.dry_run else "") + line)
        return 0
    finally:
        rt.close()


# -- registration -----------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add ``run``, ``demo``, ``approvals``, ``approve``, ``reject``, ``history``, ``replay``
    and ``prune`` to keel's subcommands."""
    r = sub.add_parser("run", help="run a batch of tickets (batch contract)")
    r.add_argument("--fixtures", required=True, help="back-office fixtures JSON")
    r.add_argument("--tickets", required=True, help="tickets JSON Lines")
    r.add_argument("--now", required=True, help="the run clock, ISO 8601")
    r.add_argument("--out", help="output file (default: standard output)")
    r.add_argument("--config", metavar="PATH",
                   help="langgraph.json to load (as `langgraph dev --config`); its `support` graph runs the tickets")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the bundled demo tickets and print a summary")
    d.add_argument("--tickets", help="tickets JSON Lines (default: the bundled demo tickets)")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("approvals", help="list pending approvals")
    a.add_argument("--tenant")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true")
    a.add_argument("--as", dest="as_user", help="say whether this user may decide each plan")
    a.set_defaults(func=cmd_approvals)

    for name, func in (("approve", cmd_approve), ("reject", cmd_reject)):
        c = sub.add_parser(name, help=f"{name} a pending plan")
        c.add_argument("thread")
        c.add_argument("--as", dest="as_user", required=True, help="the reviewer's user id")
        c.add_argument("--reason", required=(name == "reject"))
        c.add_argument("--plan-hash", help="the hash you reviewed (default: the pending plan's)")
        if name == "approve":
            c.add_argument("--edit", action="append", help="INDEX:field=value, only downward (repeatable)")
        c.set_defaults(func=func)

    h = sub.add_parser("history", help="list a thread's checkpoints")
    h.add_argument("thread")
    h.set_defaults(func=cmd_history)

    rp = sub.add_parser("replay", help="re-run a thread from a checkpoint")
    rp.add_argument("thread")
    rp.add_argument("--from", dest="from_checkpoint", required=True)
    rp.add_argument("--fork", action="store_true", help="branch off the checkpoint instead of replaying it")
    rp.set_defaults(func=cmd_replay)

    pr = sub.add_parser("prune", help="delete checkpoint history of finished runs (never of waiting ones)")
    pr.add_argument("--ttl", type=float, metavar="DAYS", help="delete whole threads finished more than DAYS ago")
    pr.add_argument("--keep-latest", action="store_true", help="keep only the latest checkpoint of finished threads")
    pr.add_argument("--tenant", help="only this tenant's runs")
    pr.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    pr.set_defaults(func=cmd_prune)
