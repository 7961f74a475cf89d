"""``keel eval DATASET [DATASET ...]``: the quality report of the support workflow.

Registered as a subcommand of ``keel`` (``cli/main.py``); also runs as ``python -m evals.cli``.

Exit status: 0 when done (and, with ``--baseline``, no metric regressed past its
tolerance), 1 when the baseline gate fails, 2 on input it cannot use (a clear one-line
message on standard error, never a stack trace).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from evals.render import print_comparison, print_report, render_html
from evals.report import (
    EvalError,
    compare,
    evaluate,
    load_datasets,
    load_prices,
    load_tolerances,
    make_config,
    merge_reports,
)
from keel.config import get_settings

__all__ = ["cmd_eval", "main", "register"]

MAX_TRIALS = 100
"""More trials than this is a typo, not a measurement."""


def _now(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _trials(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= k <= MAX_TRIALS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TRIALS}, got {k}")
    return k


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``keel eval`` (shared by ``keel eval`` and ``python -m evals.cli``)."""
    p.add_argument("datasets", nargs="+", type=Path, metavar="DATASET",
                   help="folder with fixtures.json, tickets.jsonl, expected.jsonl (and optionally dataset.toml); "
                        "several are reported side by side")
    p.add_argument("--trials", type=_trials, default=1, metavar="K", help="run each dataset K times; reports pass^K (default 1)")
    p.add_argument("--json", dest="json_out", type=Path, metavar="REPORT.json", help="write the report as JSON (a baseline)")
    p.add_argument("--html", dest="html_out", type=Path, metavar="REPORT.html", help="write a self-contained HTML report")
    p.add_argument("--baseline", type=Path, action="append", metavar="REPORT.json",
                   help="compare with this report (repeatable: datasets are matched by name); "
                        "exit 1 when a metric regresses past its tolerance")
    p.add_argument("--tolerances", type=Path, default=None, metavar="FILE",
                   help="tolerances for --baseline (default: evals/tolerances.toml)")
    p.add_argument("--policy", type=Path, default=None, metavar="FILE", help="evaluate under this policy pack instead")
    p.add_argument("--now", type=_now, default=None,
                   help="run clock (ISO 8601) for datasets whose dataset.toml gives none")
    p.add_argument("-v", "--verbose", action="store_true", help="list every failed ticket")


def register(sub: Any) -> None:
    """Add ``eval`` to ``keel``'s subcommands."""
    p = sub.add_parser("eval", help="quality report on labelled datasets (accuracy, safety, latency, cost, pass^k)",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the datasets, print the bundle, write the files, apply the baseline gate."""
    err = Console(stderr=True)
    out = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        datasets = [d for p in args.datasets for d in load_datasets(p, args.now)]
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise EvalError(f"two datasets are called the same ({', '.join(names)}): name them in dataset.toml")
        baseline = merge_reports(args.baseline) if args.baseline else None
        tolerances = load_tolerances(args.tolerances) if args.tolerances else (load_tolerances() if baseline else None)
        settings = get_settings()
        if args.policy is not None:
            if not args.policy.is_file():
                raise EvalError(f"{args.policy}: no such policy file")
            settings = settings.model_copy(update={"policy_file": args.policy})
        for path in (args.json_out, args.html_out):
            if path is not None and not path.parent.is_dir():
                raise EvalError(f"{path}: folder {path.parent} does not exist")
        config, prices = make_config(settings, args.trials), load_prices()  # bad input fails before any run
        total = sum(len(d.tickets) for d in datasets) * args.trials
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("evaluating", total=total)

            def tick(ds: Any, trial: int, run: Any) -> None:
                bar.update(task, advance=1, description=f"{ds.name} trial {trial}/{args.trials}")

            report = evaluate(datasets, settings, trials=args.trials, on_ticket=tick, config=config, prices=prices)
        comparisons, notes = compare(report, baseline, tolerances) if baseline is not None and tolerances else (None, [])
    except EvalError as e:
        print(f"keel eval: {e}", file=sys.stderr)
        return 2
    print_report(out, report, verbose=args.verbose)
    if args.json_out:
        args.json_out.write_text(report.model_dump_json(indent=1) + "\n", encoding="utf-8")
        err.print(f"wrote {args.json_out}", highlight=False)
    if args.html_out:
        args.html_out.write_text(render_html(report, comparisons, notes), encoding="utf-8")
        err.print(f"wrote {args.html_out}", highlight=False)
    if comparisons is not None:
        print_comparison(out, comparisons, notes)
        return 1 if any(c.regressed for c in comparisons) else 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evals.cli``: the same as ``keel eval``."""
    parser = argparse.ArgumentParser(prog="python -m evals.cli", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
