"""``keel replay-trace``: replay recorded runs under a candidate configuration, print the diff.

``keel replay-trace THREAD --config CANDIDATE`` replays one thread's recorded run;
``keel replay-trace --since DATE --config CANDIDATE`` every run recorded since then, with a
summary. No model is called and no side effect is made (:mod:`engine.replay_trace`).
``keel replay`` (re-running a thread from a checkpoint, for real) is another command.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from cli.commands import CliError, _runtime
from engine.candidates import CandidateError, load_candidate
from engine.replay_trace import ReplayError, ReplayResult, ReplaySummary, replay_run, replay_since

__all__ = ["register", "cmd_replay_trace", "format_result", "format_summary"]


def _since(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since: not an ISO-8601 date or time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    head = ("kind", "decision", "original", "candidate")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*head), line.format(*("-" * w for w in widths)), *(line.format(*r) for r in rows)]


def format_result(r: ReplayResult) -> list[str]:
    """One replayed run as readable lines: a header, then the diff table (or "no difference")."""
    verdict = "DIVERGED" if r.diverged else "CHANGED" if r.changed else "same"
    out = [f"thread {r.thread_id} (run {r.run_id}, tenant {r.tenant}) under {r.candidate}: {verdict}"]
    if r.differences:
        out += ["  " + line for line in _table([(d.kind, d.subject, d.original, d.candidate) for d in r.differences])]
    else:
        o = r.original
        out.append(f"  no difference: route {o.route}, outcome {o.outcome}, "
                   f"verdicts {', '.join(a.decision or '-' for a in o.actions) or 'none'}")
    out += [f"  dry run (not made): {d}" for d in r.dry_run]
    out += [f"  note: {n}" for n in r.notes]
    return out


def format_summary(s: ReplaySummary) -> list[str]:
    """The runs since a date: each changed run's diff, then the counts."""
    out: list[str] = []
    for r in s.results:
        if r.changed:
            out += format_result(r)
    out += [f"failed: thread {t}: {why}" for t, why in s.failures]
    kinds = ", ".join(f"{k} {n}" for k, n in s.by_kind.items()) or "none"
    out.append(f"{s.total} runs since {s.since.isoformat()} under {s.candidate}: {s.changed} changed "
               f"({s.diverged} diverged), {s.same} same, {s.failed} failed to replay; by kind: {kinds}")
    return out


def cmd_replay_trace(args: argparse.Namespace) -> int:
    """Replay one thread or every run since a date under ``--config``; print the diff."""
    if (args.thread is None) == (args.since is None):
        raise CliError("give a THREAD or --since DATE (one of them)")
    since = _since(args.since) if args.since is not None else None
    try:
        candidate = load_candidate(args.config)
    except CandidateError as e:
        raise CliError(str(e)) from None
    rt = _runtime()
    try:
        payload: dict[str, Any]
        if since is None:
            try:
                result = replay_run(rt, args.thread, candidate, run_id=args.run)
            except ReplayError as e:
                raise CliError(str(e)) from None
            payload, lines = result.to_json(), format_result(result)
        else:
            summary = replay_since(rt, since, candidate, tenant=args.tenant, limit=args.limit)
            payload, lines = summary.to_json(), format_summary(summary)
        print(json.dumps(payload, indent=2, ensure_ascii=False) if args.json else "\n".join(lines))
        return 0
    finally:
        rt.close()


def register(sub: Any) -> None:
    """Add ``keel replay-trace``."""
    p = sub.add_parser("replay-trace", help="replay recorded runs under a candidate policy/routing; show what changes")
    p.add_argument("thread", nargs="?", default=None, help="thread id of the recorded run")
    p.add_argument("--since", default=None, help="replay every run recorded since this ISO date/time")
    p.add_argument("--config", required=True, help="candidate file (TOML: name, policy, routing, prompts) or a policy pack")
    p.add_argument("--run", default=None, help="only this run of the thread (default: all its recorded runs)")
    p.add_argument("--tenant", default=None, help="with --since: only this tenant's runs")
    p.add_argument("--limit", type=int, default=100, help="with --since: at most this many runs (default 100)")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=cmd_replay_trace)
