"""The ``keel`` command (``keel = cli.main:main``): every subcommand, one parser.

The commands themselves live in :mod:`cli.commands` (batch runs, demo, approvals,
history, replay, prune), :mod:`cli.service` (``serve``, ``worker``, ``keys``) and
:mod:`evals.cli` (``eval``). Every command reports bad input as one clear line on
standard error and a non-zero exit status, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cli import apidocs, commands, feedback, replay_trace, service, trace
from cli import release as release_cli
from cli import forget as forget_cli
from cli.commands import CliError
from evals.cli import register as register_eval
from guards.dlp import install_redaction
from keel.config import get_settings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(prog="keel", description="Run support workflows as LangGraph state graphs.")
    sub = p.add_subparsers(dest="command", required=True)
    commands.register(sub)
    register_eval(sub)  # keel eval: quality report on labelled datasets
    service.register(sub)  # keel serve, keel worker, keel keys
    feedback.register(sub)  # keel feedback export: reviewers' decisions as a golden set
    trace.register(sub)  # keel trace THREAD: spans with timings
    replay_trace.register(sub)  # keel replay-trace: recorded runs under a candidate configuration
    apidocs.register(sub)  # keel api-docs: docs/api.md from the OpenAPI document
    release_cli.register(sub)  # keel release: shadow and canary releases of a candidate
    forget_cli.register(sub)  # keel forget CUSTOMER: erase a customer's data, keep the audit chain
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keel`` console script."""
    args = build_parser().parse_args(argv)
    try:
        level = get_settings().log_level.upper()
    except Exception as e:  # bad KEEL_* values
        print(f"keel: invalid settings: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, level, logging.INFO) if args.command != "run" else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("keel.nodes").setLevel(logging.WARNING)
    install_redaction(logging.getLogger())
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"keel {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
