"""``keel release start|status|stop|promote``: a candidate configuration on live traffic.

``keel release start CANDIDATE_FILE --canary PCT`` sends that share of new runs to the
candidate (a candidate file or a bare policy pack, :mod:`engine.candidates`) and rolls it
back by itself when it does worse than stable beyond a margin; ``--shadow`` replays live runs
under it without affecting them. ``status`` shows each arm's runs and rates (or the shadow's
agreement), ``stop`` ends the release, ``promote`` ends it as promoted and prints where its
stored files are, to deploy as the stable configuration (see :mod:`engine.releases`).
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cli.commands import CliError, _runtime
from engine.candidates import CandidateError
from engine.releases import METRICS, Margins, Release, ReleaseError, ReleaseStatus, release_store, start_release
from engine.runtime import Runtime

__all__ = ["register", "cmd_release_start", "cmd_release_status", "cmd_release_end"]


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return args.actor
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name (a container): still an operator
        return "cli"


def _margins(args: argparse.Namespace) -> Margins:
    given = {m: getattr(args, f"margin_{m}") for m in METRICS if getattr(args, f"margin_{m}") is not None}
    try:
        return Margins(**given)
    except ValidationError as e:
        err = e.errors()[0]
        raise CliError(f"--margin-{err['loc'][0]}: {err['msg'].lower()}") from None


def _line(rel: Release) -> str:
    what = f"canary ({rel.percent:g}% of new runs)" if rel.mode == "canary" else "shadow"
    return (f"release {rel.release_id}: {what} of {rel.candidate_name} (sha256 {rel.candidate_sha256[:12]}) "
            f"on graph {rel.graph_id}: {rel.state}")


def cmd_release_start(args: argparse.Namespace) -> int:
    """Start a canary or a shadow release; prints its id."""
    if not args.candidate.is_file():
        raise CliError(f"{args.candidate}: no such file")
    margins = _margins(args)
    rt = _runtime()
    try:
        try:
            rel = start_release(rt, args.candidate, mode="shadow" if args.shadow else "canary",
                                percent=args.canary or 0.0, margins=margins, min_runs=args.min_runs,
                                graph_id=args.graph, actor=_actor(args), reason=args.reason)
        except (CandidateError, ReleaseError) as e:
            raise CliError(str(e).splitlines()[0]) from None
        print(json.dumps(rel.public(), indent=2) if args.json else _line(rel))
        return 0
    finally:
        rt.close()


def _table(status: ReleaseStatus) -> list[str]:
    rel = status.release
    out = [_line(rel), f"  started {rel.started_at} by {rel.started_by}"
           + (f"; ended {rel.ended_at} by {rel.ended_by}" if rel.ended_at else "")]
    if rel.reason:
        out.append(f"  reason: {rel.reason}")
    if rel.mode == "canary":
        m = rel.margins
        out.append(f"  margins: error {m.error:g}, escalation {m.escalation:g}, safety {m.safety:g}; "
                   f"at least {rel.min_runs} finished runs per arm")
        out.append(f"  {'arm':<10} {'runs':>6} {'in flight':>9} {'error':>7} {'escalation':>10} {'safety':>7}")
        for name in ("candidate", "stable"):
            a = status.arms[name]
            out.append(f"  {name:<10} {a.runs:>6} {a.in_flight:>9} {a.rate('error'):>7.3f} "
                       f"{a.rate('escalation'):>10.3f} {a.rate('safety'):>7.3f}")
        if status.worse:
            out.append(f"  worse than stable beyond the margin: {', '.join(status.worse)}")
    elif status.shadow is not None:
        s = status.shadow
        agreement = "-" if s.agreement is None else f"{s.agreement:.3f}"
        out.append(f"  shadow: {s.compared} compared, {s.changed} changed, {s.failed} failed; agreement {agreement}")
    return out


def cmd_release_status(args: argparse.Namespace) -> int:
    """The graph's active release (else its latest) with each arm's metrics."""
    rt = _runtime()
    try:
        store = release_store(rt)
        rel = store.latest(args.graph)
        if rel is None:
            print(json.dumps({"release": None}) if args.json else f"no release of graph {args.graph}")
            return 0
        status = store.status(rel)
        print(json.dumps(status.summary(), indent=2) if args.json else "\n".join(_table(status)))
        return 0
    finally:
        rt.close()


def _promoted_files(rt: Runtime, rel: Release) -> list[str]:
    cand = release_store(rt).candidate(rel, rt.settings.data_dir)
    return [f"  {name}: {value}" for name, value in cand.model_dump().items() if isinstance(value, Path)]


def cmd_release_end(args: argparse.Namespace) -> int:
    """Stop or promote the graph's active release."""
    state = "promoted" if args.release_command == "promote" else "stopped"
    rt = _runtime()
    try:
        try:
            rel = release_store(rt).end(args.graph, state, actor=_actor(args), reason=args.reason)
        except ReleaseError as e:
            raise CliError(str(e)) from None
        lines = [_line(rel)]
        if state == "promoted":
            lines.append("new runs run the stable configuration until it is deployed; the candidate's files:")
            lines += _promoted_files(rt, rel)
        print("\n".join(lines))
        return 0
    finally:
        rt.close()


def _common(p: Any, *, reason: bool = True) -> None:
    p.add_argument("--graph", default="support", help="the graph the release applies to (default: support)")
    p.add_argument("--actor", default=None, help="who is acting, for the audit trail (default: cli:<login>)")
    if reason:
        p.add_argument("--reason", default=None, help="why, for the audit trail")


def register(sub: Any) -> None:
    """Add ``keel release``."""
    r = sub.add_parser("release", help="try a candidate configuration on live runs (shadow or canary)")
    rsub = r.add_subparsers(dest="release_command", required=True)
    s = rsub.add_parser("start", help="start a canary (--canary PCT) or a shadow (--shadow) release")
    s.add_argument("candidate", type=Path, metavar="CANDIDATE_FILE", help="a candidate file or a policy pack")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--canary", type=float, metavar="PCT", help="share of new runs (0-100] that run the candidate")
    how.add_argument("--shadow", action="store_true", help="replay live runs under the candidate; affect none")
    for m in METRICS:
        s.add_argument(f"--margin-{m}", type=float, default=None, metavar="RATE",
                       help=f"roll back when the candidate's {m} rate exceeds stable's by more than this "
                            f"(default {Margins.model_fields[m].default:g})")
    s.add_argument("--min-runs", type=int, default=20, metavar="N",
                   help="finished runs each arm needs before the arms are compared (default 20)")
    s.add_argument("--json", action="store_true", help="print the release as JSON")
    _common(s)
    s.set_defaults(func=cmd_release_start)
    st = rsub.add_parser("status", help="the active (else latest) release with each arm's runs and rates")
    st.add_argument("--graph", default="support", help="the graph (default: support)")
    st.add_argument("--json", action="store_true", help="as JSON")
    st.set_defaults(func=cmd_release_status)
    for name, text in (("stop", "end the active release; new runs run the stable configuration"),
                       ("promote", "end the active release as promoted and show the candidate's files to deploy")):
        e = rsub.add_parser(name, help=text)
        _common(e)
        e.set_defaults(func=cmd_release_end)
