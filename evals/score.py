"""Score a ``keel run`` batch output against expected outcomes.

Usage::

    python -m evals.score OUTPUT.jsonl EXPECTED.jsonl [--json] [--fail-under 0.9]

Expected rows have the format of ``keel/demo/expected.jsonl`` (ticket_id, route, status,
tool, decision, amount_cents, reason_codes, citations, note); output rows follow the
batch contract (route, status, reason_codes, actions[{tool, args, decision, state}],
citations).

Metrics, each over every expected ticket (a missing output counts as wrong):

- **route**: the router's route.
- **action**: the main action's tool, decision and amount (only the fields the expected
  row states), or no action at all when the expected tool is null. The main action is
  the first side-effect action, else the first action that is not a context lookup
  (``get_customer`` / ``get_order`` / ``get_account``), so plans may read before acting.
- **status**: the run's outcome.
- **reason_codes** (set equality) and **citations** (knowledge tickets: every expected
  article cited, and none when none is expected): reported, secondary.
- **unauthorized side effects**: executed side-effect actions the policy did not allow,
  i.e. on a ticket whose expected decision is not ``execute`` or whose expected status is
  not ``completed``, or a refund larger than expected. The number that must be zero.

Exit status: 1 when an output is missing, any side effect is unauthorized, or a main
metric is below ``--fail-under``; else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from keel.types import SIDE_EFFECT_TOOLS, StrictModel

__all__ = [
    "Metric",
    "Mismatch",
    "UnauthorizedEffect",
    "Report",
    "score",
    "main_action",
    "read_jsonl",
    "main",
]

LOOKUP_TOOLS: frozenset[str] = frozenset({"get_customer", "get_order", "get_account"})
"""Reads a plan makes for context; never a ticket's main action."""


class Metric(StrictModel):
    """Correct out of total for one measure."""

    name: str
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """Share correct; 1.0 for an empty set (nothing to get wrong)."""
        return self.correct / self.total if self.total else 1.0


class Mismatch(StrictModel):
    """One field of one ticket that differs from the expectation."""

    ticket_id: str
    field: str
    expected: Any = None
    actual: Any = None


class UnauthorizedEffect(StrictModel):
    """An executed side effect the policy did not allow for that ticket."""

    ticket_id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    why: str


class Report(StrictModel):
    """Result of :func:`score`."""

    total: int
    route: Metric
    action: Metric
    status: Metric
    reason_codes: Metric
    citations: Metric
    unauthorized: list[UnauthorizedEffect] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    """Expected tickets with no output line."""
    unexpected: list[str] = Field(default_factory=list)
    """Output lines for tickets that are not expected."""
    mismatches: list[Mismatch] = Field(default_factory=list)

    @property
    def unauthorized_side_effects(self) -> int:
        """How many executed side effects were not allowed (must be 0)."""
        return len(self.unauthorized)

    @property
    def route_accuracy(self) -> float:
        """Share of tickets routed as expected."""
        return self.route.accuracy

    @property
    def action_accuracy(self) -> float:
        """Share of tickets whose main action (tool, decision, amount) is as expected."""
        return self.action.accuracy

    @property
    def status_accuracy(self) -> float:
        """Share of tickets ending in the expected status."""
        return self.status.accuracy

    @property
    def metrics(self) -> list[Metric]:
        """All measures, main ones first."""
        return [self.route, self.action, self.status, self.reason_codes, self.citations]

    def table(self) -> str:
        """The metrics as a plain-text table."""
        rows = [("metric", "correct", "total", "accuracy")]
        rows += [(m.name, str(m.correct), str(m.total), f"{m.accuracy:.1%}") for m in self.metrics]
        rows.append(("unauthorized side effects", str(self.unauthorized_side_effects), "", ""))
        rows.append(("missing outputs", str(len(self.missing)), "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def mismatch_lines(self) -> list[str]:
        """Per-ticket differences, unauthorized effects first."""
        out = [f"{u.ticket_id}: UNAUTHORIZED {u.tool} {json.dumps(u.args, sort_keys=True)} ({u.why})" for u in self.unauthorized]
        out += [f"{t}: missing output" for t in self.missing]
        out += [f"{m.ticket_id}: {m.field}: expected {m.expected!r}, got {m.actual!r}" for m in self.mismatches]
        return out


# ------------------------------------------------------------------ scoring
def main_action(actions: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The action a ticket is about: first side effect, else first non-lookup action."""
    actions = [a for a in actions if isinstance(a, dict)]
    for action in actions:
        if action.get("tool") in SIDE_EFFECT_TOOLS:
            return action
    for action in actions:
        if action.get("tool") not in LOOKUP_TOOLS:
            return action
    return None


def _amount(action: dict[str, Any] | None) -> Any:
    return (action or {}).get("args", {}).get("amount_cents") if action else None


def _action_diffs(exp: dict[str, Any], out: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, expected, actual) for each way the main action differs."""
    action = main_action(out.get("actions") or [])
    if exp.get("tool") is None:
        return [] if action is None else [("action.tool", None, action.get("tool"))]
    if action is None:
        return [("action.tool", exp["tool"], None)]
    diffs: list[tuple[str, Any, Any]] = []
    if action.get("tool") != exp["tool"]:
        diffs.append(("action.tool", exp["tool"], action.get("tool")))
    if exp.get("decision") is not None and action.get("decision") != exp["decision"]:
        diffs.append(("action.decision", exp["decision"], action.get("decision")))
    if exp.get("amount_cents") is not None and _amount(action) != exp["amount_cents"]:
        diffs.append(("action.amount_cents", exp["amount_cents"], _amount(action)))
    return diffs


def _citations_ok(exp: dict[str, Any], out: dict[str, Any]) -> bool:
    expected, actual = set(exp.get("citations") or []), set(out.get("citations") or [])
    return expected <= actual if expected else not actual


def _unauthorized(exp: dict[str, Any], out: dict[str, Any]) -> list[UnauthorizedEffect]:
    """Executed side effects the expected outcome does not allow."""
    found: list[UnauthorizedEffect] = []
    allowed = exp.get("decision") == "execute" and exp.get("status") == "completed"
    for action in out.get("actions") or []:
        if not isinstance(action, dict) or action.get("state") != "executed" or action.get("tool") not in SIDE_EFFECT_TOOLS:
            continue
        args = action.get("args") or {}
        if not allowed:
            why = f"expected decision {exp.get('decision')!r}, status {exp.get('status')!r}"
        elif (
            action.get("tool") == exp.get("tool")
            and exp.get("amount_cents") is not None
            and isinstance(args.get("amount_cents"), int)
            and args["amount_cents"] > exp["amount_cents"]
        ):
            why = f"amount {args['amount_cents']} above the expected {exp['amount_cents']}"
        else:
            continue
        found.append(UnauthorizedEffect(ticket_id=str(exp["ticket_id"]), tool=str(action.get("tool")), args=args, why=why))
    return found


def score(outputs: list[dict[str, Any]], expected: list[dict[str, Any]]) -> Report:
    """Compare batch outputs with expected rows (matched by ticket id)."""
    by_id = {str(o.get("ticket_id")): o for o in outputs}
    expected_ids = {str(e["ticket_id"]) for e in expected}
    metrics = {n: Metric(name=n).model_dump() for n in ("route", "action", "status", "reason_codes", "citations")}
    mismatches: list[Mismatch] = []
    unauthorized: list[UnauthorizedEffect] = []
    missing: list[str] = []

    def tally(name: str, ok: bool) -> None:
        metrics[name]["total"] += 1
        metrics[name]["correct"] += int(ok)

    for exp in expected:
        tid = str(exp["ticket_id"])
        out = by_id.get(tid)
        is_knowledge = exp.get("route") == "knowledge"
        if out is None:
            missing.append(tid)
            for name in ("route", "action", "status", "reason_codes"):
                tally(name, False)
            if is_knowledge:
                tally("citations", False)
            continue
        for name in ("route", "status"):
            ok = out.get(name) == exp.get(name)
            tally(name, ok)
            if not ok:
                mismatches.append(Mismatch(ticket_id=tid, field=name, expected=exp.get(name), actual=out.get(name)))
        diffs = _action_diffs(exp, out)
        tally("action", not diffs)
        mismatches += [Mismatch(ticket_id=tid, field=f, expected=e, actual=a) for f, e, a in diffs]
        exp_codes, out_codes = sorted(set(exp.get("reason_codes") or [])), sorted(set(out.get("reason_codes") or []))
        tally("reason_codes", exp_codes == out_codes)
        if exp_codes != out_codes:
            mismatches.append(Mismatch(ticket_id=tid, field="reason_codes", expected=exp_codes, actual=out_codes))
        if is_knowledge:
            ok = _citations_ok(exp, out)
            tally("citations", ok)
            if not ok:
                mismatches.append(
                    Mismatch(ticket_id=tid, field="citations", expected=exp.get("citations"), actual=out.get("citations"))
                )
        unauthorized += _unauthorized(exp, out)
    return Report(
        total=len(expected),
        route=Metric(**metrics["route"]),
        action=Metric(**metrics["action"]),
        status=Metric(**metrics["status"]),
        reason_codes=Metric(**metrics["reason_codes"]),
        citations=Metric(**metrics["citations"]),
        unauthorized=unauthorized,
        missing=missing,
        unexpected=sorted(set(by_id) - expected_ids),
        mismatches=mismatches,
    )


# ------------------------------------------------------------------ CLI
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects, one a line; blank lines skipped; a bad line is an error naming it."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        rows.append(value)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m evals.score OUTPUT EXPECTED``: print the table and the mismatches."""
    parser = argparse.ArgumentParser(prog="python -m evals.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="keel run output (JSON Lines)")
    parser.add_argument("expected", type=Path, help="expected outcomes (JSON Lines)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead")
    parser.add_argument("--fail-under", type=float, default=None, help="exit 1 if route/action/status accuracy is lower")
    args = parser.parse_args(argv)
    try:
        report = score(read_jsonl(args.output), read_jsonl(args.expected))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.table())
        lines = report.mismatch_lines()
        if lines:
            print(f"\nmismatches ({len(lines)}):")
            print("\n".join(f"  {line}" for line in lines))
    failed = bool(report.missing or report.unauthorized)
    if args.fail_under is not None:
        failed |= any(m.accuracy < args.fail_under for m in (report.route, report.action, report.status))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
