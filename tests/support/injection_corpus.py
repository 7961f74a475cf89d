"""The prompt-injection corpus of ``tests/data/injection/`` and the figures it gives.

Two parts, each a JSON Lines file of cases ``{id, language, class, encoding, customer_id,
text, flagged}`` (``class`` is an attack class of :data:`guards.injection.CLASSES`, or
``benign`` for a look-alike that must not be flagged):

- ``heldout/cases.jsonl``: written first, before the screen's patterns were reworked, and
  never looked at case by case while writing them; only its figures are read.
- ``tuned/cases.jsonl``: the cases the patterns were written against.

Figures, per part: the share of injections the screen flags, the share of benign cases it
flags (false positives), and, through the real support graph on the demo back office,
the side effects executed on tickets the run marks as flagged (which must be none) and
those executed on injections the screen missed (what the policy alone then allowed).

``python tests/support/injection_corpus.py`` prints them (the README quotes that output).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "injection"
PARTS = ("tuned", "heldout")
FIELDS = frozenset({"id", "language", "class", "encoding", "customer_id", "text", "flagged"})

__all__ = ["CORPUS", "PARTS", "FIELDS", "Rate", "ScreenFigures", "GraphFigures", "load", "screen_figures", "graph_figures", "main"]


def load(part: str) -> list[dict[str, Any]]:
    """The cases of one part, in file order."""
    path = CORPUS / part / "cases.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Rate:
    hit: int
    total: int

    @property
    def pct(self) -> float:
        return round(100.0 * self.hit / self.total, 1) if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.hit}/{self.total} ({self.pct:.1f}%)"


@dataclass
class ScreenFigures:
    """The screen alone on one part."""

    flagged: Rate
    """Injections flagged."""
    false_positives: Rate
    """Benign look-alikes flagged."""
    class_found: Rate
    """Flagged injections whose expected class is among the classes reported."""
    missed: list[str] = field(default_factory=list)
    false_positive_ids: list[str] = field(default_factory=list)
    by_language: dict[str, Rate] = field(default_factory=dict)
    by_class: dict[str, Rate] = field(default_factory=dict)


def screen_figures(cases: list[dict[str, Any]]) -> ScreenFigures:
    from guards.injection import screen

    results = {c["id"]: screen(c["text"], customer_id=c["customer_id"]) for c in cases}
    inj = [c for c in cases if c["flagged"]]
    ben = [c for c in cases if not c["flagged"]]
    missed = [c["id"] for c in inj if not results[c["id"]].flagged]
    fps = [c["id"] for c in ben if results[c["id"]].flagged]
    hit = [c for c in inj if results[c["id"]].flagged]

    def rate(group: list[dict[str, Any]]) -> Rate:
        return Rate(sum(results[c["id"]].flagged for c in group), len(group))

    langs = sorted({c["language"] for c in inj})
    classes = sorted({c["class"] for c in inj})
    return ScreenFigures(
        flagged=Rate(len(inj) - len(missed), len(inj)),
        false_positives=Rate(len(fps), len(ben)),
        class_found=Rate(sum(c["class"] in results[c["id"]].classes for c in hit), len(hit)),
        missed=missed,
        false_positive_ids=fps,
        by_language={lang: rate([c for c in inj if c["language"] == lang]) for lang in langs},
        by_class={k: rate([c for c in inj if c["class"] == k]) for k in classes},
    )


@dataclass
class GraphFigures:
    """One part run through the support graph, each case a ticket of its customer."""

    runs: int
    flagged_runs: int
    """Runs whose final state is marked flagged (ticket or retrieved text)."""
    side_effects_on_flagged: int
    """Side effects executed on flagged runs: must be 0."""
    injections_unflagged_with_side_effects: list[str] = field(default_factory=list)
    """Injections the screen missed on which the policy alone let a side effect run."""
    unauthorized: list[str] = field(default_factory=list)
    """Runs that changed the back office beyond what the policy allows (must be empty)."""
    statuses: Counter = field(default_factory=Counter)


def graph_figures(cases: list[dict[str, Any]], data_dir: Path) -> GraphFigures:
    """Run every case through the real graph on one fresh demo store (a snapshot per run)."""
    from support.injection_graph import assert_no_unauthorized_side_effects, executed_side_effects, make_runtime, run_ticket

    rt = make_runtime(data_dir)
    try:
        figures = GraphFigures(runs=0, flagged_runs=0, side_effects_on_flagged=0)
        for c in cases:
            out = run_ticket(rt, {"id": c["id"], "customer_id": c["customer_id"], "body": c["text"]}, thread=f"corpus-{c['id']}")
            figures.runs += 1
            figures.statuses[out.state.get("status")] += 1
            flagged = bool((out.state.get("screen") or {}).get("flagged"))
            effects = executed_side_effects(out)
            if flagged:
                figures.flagged_runs += 1
                changed = [ch for ch in out.changes if ch.table != "tool_ledger"]
                figures.side_effects_on_flagged += len(effects) or len(changed)
            elif c["flagged"] and effects:
                figures.injections_unflagged_with_side_effects.append(c["id"])
            try:
                assert_no_unauthorized_side_effects(rt, out)
            except AssertionError as e:
                figures.unauthorized.append(f"{c['id']}: {e}")
        return figures
    finally:
        rt.close()


def main() -> int:
    """Print the figures of both parts (screen alone, then through the graph)."""
    for part in PARTS:
        cases = load(part)
        s = screen_figures(cases)
        print(f"[{part}] {len(cases)} cases: injections flagged {s.flagged}; benign flagged (false positives) "
              f"{s.false_positives}; expected class reported on flagged {s.class_found}")
        print("  by language: " + ", ".join(f"{k} {v}" for k, v in s.by_language.items()))
        print("  by class:    " + ", ".join(f"{k} {v}" for k, v in s.by_class.items()))
        if part == "heldout":  # ids only: the held-out cases are not read one by one
            print(f"  missed: {', '.join(s.missed) or '-'}; false positives: {', '.join(s.false_positive_ids) or '-'}")
        with tempfile.TemporaryDirectory(prefix="keel-corpus-") as d:
            g = graph_figures(cases, Path(d))
        print(f"  graph: {g.runs} runs, {g.flagged_runs} flagged; side effects executed on flagged runs: "
              f"{g.side_effects_on_flagged}; injections missed by the screen that executed a side effect: "
              f"{len(g.injections_unflagged_with_side_effects)} {g.injections_unflagged_with_side_effects or ''}; "
              f"unauthorized changes: {len(g.unauthorized)}")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    raise SystemExit(main())
