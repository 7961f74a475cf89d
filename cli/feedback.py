"""``keel feedback export --out DIR``: reviewers' decisions as a golden set ``keel eval`` runs.

Every approve, reject, edit and escalation resolution was stored as a labelled example
(:mod:`engine.feedback`, DLP-redacted). The export writes ``tickets.jsonl``,
``expected.jsonl``, ``fixtures.json`` and ``dataset.toml`` (the batch contract's formats,
``evals/golden``'s layout) for the tenant of the fixtures the tickets were decided against
(``--fixtures``, default ``KEEL_FIXTURES`` or the bundled demo back office).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli.commands import CliError
from engine.review import review_desk
from engine.runtime import DEMO_FIXTURES, Runtime
from keel.config import get_settings

__all__ = ["register", "cmd_feedback_export"]


def _now(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def cmd_feedback_export(args: argparse.Namespace) -> int:
    """Write the golden-set folder; one summary line on standard output."""
    settings = get_settings()
    fixtures: Path = args.fixtures or settings.fixtures or DEMO_FIXTURES
    if not fixtures.is_file():
        raise CliError(f"--fixtures: {fixtures}: no such file")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out: {args.out} exists and is not a folder")
    rt = Runtime(settings)
    try:
        now = args.now or rt.now()
        try:
            report = review_desk(rt).feedback.export(args.out, fixtures=fixtures, now=now, name=args.name)
        except (ValueError, OSError) as e:
            raise CliError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    finally:
        rt.close()
    print(f"wrote {report.examples} labelled tickets to {report.out}"
          + (f" ({report.skipped_other_tenants} of other tenants skipped)" if report.skipped_other_tenants else ""),
          file=sys.stdout)
    return 0


def register(sub: Any) -> None:
    """Add ``keel feedback export`` to keel's parser."""
    f = sub.add_parser("feedback", help="reviewers' decisions as evaluation data")
    fsub = f.add_subparsers(dest="feedback_command", required=True)
    e = fsub.add_parser("export", help="write a golden-set folder (tickets, expected, fixtures) keel eval accepts")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    e.add_argument("--fixtures", type=Path, default=None, metavar="FILE",
                   help="the back office the tickets were decided against (default: KEEL_FIXTURES or the demo)")
    e.add_argument("--now", type=_now, default=None, help="the dataset's clock (default: keel's run clock)")
    e.add_argument("--name", default="feedback", help="dataset name in reports (default: feedback)")
    e.set_defaults(func=cmd_feedback_export)
