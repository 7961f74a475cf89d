"""Quality report of the support workflow on labelled datasets: what ``keel eval`` runs.

A dataset is a folder with ``fixtures.json``, ``tickets.jsonl`` and ``expected.jsonl`` (the
batch contract's formats and ``evals/golden/expected.jsonl``'s), and optionally a
``dataset.toml`` manifest naming it and giving the clock its fixtures are dated for. Each
trial runs every ticket through the real support graph (:func:`engine.batch.run_ticket`) on
a fresh embedded store, scores the outputs with :func:`evals.score.score`, and adds what a
batch output cannot show: latency per ticket and the model tokens each run spent (from
its ``model_call`` audit rows).

Why several trials: a real model is not deterministic, so a ticket solved once is not
solved reliably. ``pass^k`` (the chance that *all* k tries of a ticket succeed, after
tau-bench) is the figure an operator who runs a ticket many times cares about.

Why a baseline gate: a change to rules, prompts, model or policy pack must not make any
measure worse than the committed baseline by more than its tolerance
(``evals/tolerances.toml``, data not code); safety violations have tolerance 0.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, Field, ValidationError

from engine.batch import read_tickets, run_input
from engine.supply import load_supply_fixtures
from engine.runtime import Runtime
from evals.score import Report, read_jsonl, score
from guards.pack import PolicyError, load_policy
from keel.errors import InvalidInput
from keel.types import StrictModel, Ticket
from gateway.supply_rules import SupplyEvent
from tools.fixtures import parse_fixtures_text
from tools.supply import parse_supply_fixtures

__all__ = [
    "DEFAULT_PRICES",
    "DEFAULT_TOLERANCES",
    "METRICS",
    "Comparison",
    "Dataset",
    "DatasetManifest",
    "DatasetResult",
    "EvalConfig",
    "EvalError",
    "EvalReport",
    "RouteStat",
    "SafetyEvent",
    "TicketFailure",
    "TicketRun",
    "Tolerance",
    "Tolerances",
    "compare",
    "evaluate",
    "load_dataset",
    "load_datasets",
    "load_prices",
    "load_report",
    "load_tolerances",
    "make_config",
    "merge_reports",
    "pass_hat",
    "percentile",
    "run_trial",
    "summarize",
]

log = logging.getLogger("evals.report")

DEFAULT_TOLERANCES = Path(__file__).with_name("tolerances.toml")
"""How far each metric may move against a baseline."""
DEFAULT_PRICES = Path(__file__).with_name("prices.toml")
"""USD per million model tokens, by provider."""
REPORT_VERSION = 1
"""Bumped when the report's JSON changes incompatibly (a baseline of another version is refused)."""
EVAL_REQUESTER = "keel-eval"
"""The user id the eval's runs are started by."""


class EvalError(InvalidInput, ValueError):
    """Input ``keel eval`` cannot use (dataset, policy, baseline, tolerances); the message says why."""


# ------------------------------------------------------------------ datasets
class DatasetManifest(StrictModel):
    """``dataset.toml``: optional; names the dataset and fixes its clock."""

    name: str | None = Field(default=None, min_length=1, max_length=64)
    now: AwareDatetime | None = None
    """The run clock the fixtures are dated for (refund windows depend on it)."""
    description: str = Field(default="", max_length=500)
    graph: str = Field(default="support", pattern=r"^(support|supply)$")
    """The workflow the dataset measures (its inputs file, input key and fixtures follow it)."""


@dataclass(frozen=True)
class WorkflowData:
    """How a workflow's dataset folder is read and loaded: its inputs file and graph input key,
    its fixtures parser and loader. ``support``: tickets; ``supply``: exception events."""

    inputs: str
    input_key: str
    parse_fixtures: Callable[[str], tuple[Any, list[str]]]
    read_inputs: Callable[[Path], tuple[list[Any], list[str]]]
    load: Callable[[Any, Any], None]


def _support_fixtures(text: str) -> tuple[Any, list[str]]:
    parsed = parse_fixtures_text(text)
    return parsed.fixtures, [str(e) for e in parsed.errors]


def _supply_fixtures(text: str) -> tuple[Any, list[str]]:
    try:
        return parse_supply_fixtures(text), []
    except ValueError as e:
        return None, [str(e)]


def _read_events(path: Path) -> tuple[list[Any], list[str]]:
    events: list[Any] = []
    errors: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(SupplyEvent.model_validate_json(line))
        except ValidationError as e:
            errors.append(f"{path}:{n}: {_first_line(e)}")
    return events, errors


WORKFLOW_DATA: dict[str, WorkflowData] = {
    "support": WorkflowData("tickets.jsonl", "ticket", _support_fixtures, read_tickets,
                            lambda rt, fx: rt.backoffice.load_fixtures(fx)),
    "supply": WorkflowData("events.jsonl", "event", _supply_fixtures, _read_events, load_supply_fixtures),
}
"""Each workflow ``keel eval`` can measure, by the graph id a ``dataset.toml`` names."""


@dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset (internal: built only by :func:`load_dataset`)."""

    name: str
    path: Path
    now: datetime
    description: str
    fixtures: Any
    """``tools.fixtures.Fixtures``."""
    tickets: tuple[Ticket, ...]
    """The inputs (support tickets, or supply events: anything with ``id`` and ``tenant``)."""
    expected: tuple[dict[str, Any], ...]
    graph: str = "support"
    """The graph every input runs through (``dataset.toml``'s ``graph``)."""

    def split(self, name: str) -> Dataset:
        """The part of the dataset whose expected rows say ``split = name`` (named ``NAME-SPLIT``)."""
        keep = {str(e["ticket_id"]) for e in self.expected if e.get("split") == name}
        return replace(self, name=f"{self.name}-{name}", tickets=tuple(t for t in self.tickets if t.id in keep),
                       expected=tuple(e for e in self.expected if str(e["ticket_id"]) in keep))

    @property
    def fixtures_json(self) -> dict[str, Any]:
        """The back office as plain JSON (what the PII check compares outputs with)."""
        return self.fixtures.model_dump(mode="json")


def _errors(what: Path, errors: Sequence[str], limit: int = 3) -> str:
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{what}: " + "; ".join(errors[:limit]) + more


def load_dataset(path: Path, default_now: datetime | None = None) -> Dataset:
    """Read and check a dataset folder; every problem is an :class:`EvalError` naming the file.

    A dataset with a malformed line is refused whole: its numbers would silently cover
    fewer tickets than it claims.
    """
    if not path.is_dir():
        raise EvalError(f"{path}: not a dataset folder (expected fixtures.json, tickets.jsonl, expected.jsonl)")
    manifest = DatasetManifest()
    if (path / "dataset.toml").is_file():
        try:
            manifest = DatasetManifest.model_validate(tomllib.loads((path / "dataset.toml").read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as e:
            raise EvalError(f"{path / 'dataset.toml'}: {_first_line(e)}") from None
    kind = WORKFLOW_DATA[manifest.graph]
    files = {name: path / name for name in ("fixtures.json", kind.inputs, "expected.jsonl")}
    files["tickets.jsonl"] = files[kind.inputs]
    missing = [name for name in ("fixtures.json", kind.inputs, "expected.jsonl") if not files[name].is_file()]
    if missing:
        raise EvalError(f"{path}: missing {', '.join(missing)}")
    now = manifest.now or default_now
    if now is None:
        raise EvalError(f"{path}: no clock: give --now or a 'now' in {path / 'dataset.toml'}")
    try:
        fixtures, fixture_errors = kind.parse_fixtures(files["fixtures.json"].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{files['fixtures.json']}: cannot read ({_first_line(e)})") from None
    if fixture_errors or fixtures is None:
        raise EvalError(_errors(files["fixtures.json"], fixture_errors))
    try:
        tickets, ticket_errors = kind.read_inputs(files["tickets.jsonl"])
        expected = read_jsonl(files["expected.jsonl"])
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: cannot read ({_first_line(e)})") from None
    except ValueError as e:
        raise EvalError(str(e)) from None
    if ticket_errors:
        raise EvalError(_errors(files["tickets.jsonl"], ticket_errors))
    ticket_ids = [t.id for t in tickets]
    expected_ids = [str(e.get("ticket_id")) for e in expected]
    for ids, f in ((ticket_ids, files["tickets.jsonl"]), (expected_ids, files["expected.jsonl"])):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise EvalError(f"{f}: duplicate ticket ids {', '.join(dupes[:5])}")
    if set(ticket_ids) != set(expected_ids):
        only_t, only_e = sorted(set(ticket_ids) - set(expected_ids)), sorted(set(expected_ids) - set(ticket_ids))
        detail = "; ".join(s for s in (f"no expected row for {', '.join(only_t[:5])}" if only_t else "",
                                       f"no ticket for {', '.join(only_e[:5])}" if only_e else "") if s)
        raise EvalError(f"{path}: tickets and expected rows differ: {detail}")
    if not tickets:
        raise EvalError(f"{files['tickets.jsonl']}: no tickets")
    return Dataset(name=manifest.name or path.resolve().name, path=path, now=now, description=manifest.description,
                   fixtures=fixtures, tickets=tuple(tickets), expected=tuple(expected), graph=manifest.graph)


def load_datasets(path: Path, default_now: datetime | None = None) -> list[Dataset]:
    """:func:`load_dataset`, cut by the expected rows' ``split`` when they carry one (e.g.
    ``tuned`` / ``heldout``), so each part is reported, and gated, on its own."""
    ds = load_dataset(path, default_now)
    splits = list(dict.fromkeys(str(e["split"]) for e in ds.expected if e.get("split")))
    if not splits:
        return [ds]
    if any(not e.get("split") for e in ds.expected):
        raise EvalError(f"{path / 'expected.jsonl'}: some rows have a split and others none")
    return [ds.split(name) for name in splits]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ------------------------------------------------------------------ prices and tolerances
class Price(StrictModel):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


def load_prices(path: Path = DEFAULT_PRICES) -> dict[str, Price]:
    """``provider`` or ``provider:model`` → price."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return {str(k): Price.model_validate(v) for k, v in data.items()}
    except (OSError, tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError, AttributeError) as e:
        raise EvalError(f"{path}: not a price table ({_first_line(e)})") from None


class Tolerance(StrictModel):
    """How far one metric may move the wrong way: ``max(abs, rel × |baseline|)``."""

    better: Literal["higher", "lower"]
    abs: float = Field(default=0.0, ge=0)
    rel: float = Field(default=0.0, ge=0)
    why: str = ""

    def allowed(self, baseline: float) -> float:
        """The largest worsening that still passes."""
        return max(self.abs, self.rel * abs(baseline))


class Tolerances(StrictModel):
    """``evals/tolerances.toml``: one table per gated metric."""

    metrics: dict[str, Tolerance]


def load_tolerances(path: Path = DEFAULT_TOLERANCES) -> Tolerances:
    """Read and validate a tolerance file; unknown metrics are refused (a typo would gate nothing)."""
    try:
        tol = Tolerances.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as e:
        raise EvalError(f"{path}: cannot read tolerances ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: invalid tolerances: {_first_line(e)}") from None
    unknown = sorted(set(tol.metrics) - {m.key for m in METRICS})
    if unknown:
        raise EvalError(f"{path}: unknown metrics {', '.join(unknown)}")
    return tol


# ------------------------------------------------------------------ one trial
class TicketRun(StrictModel):
    """One ticket's run in one trial: the batch output row and what it cost."""

    ticket_id: str
    row: dict[str, Any]
    latency_ms: float = Field(ge=0)
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    cost_usd: float | None = 0.0
    """None when a provider it used has no price."""
    providers: list[str] = Field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.tokens_in + self.tokens_out


def _price_of(prices: dict[str, Price], provider: str, model: str | None) -> Price | None:
    return prices.get(f"{provider}:{model}") if model and f"{provider}:{model}" in prices else prices.get(provider)


@contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Per-node INFO logs would drown the progress bar; warnings still show."""
    names = ("keel", "graphs", "nodes", "tools", "guards", "api", "langgraph", "httpx")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(max(logging.WARNING, saved[n]))
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def run_trial(dataset: Dataset, settings: Any, prices: dict[str, Price],
              on_ticket: Callable[[TicketRun], None] | None = None) -> list[TicketRun]:
    """Every input of ``dataset`` through its graph (``support`` unless ``dataset.toml`` names
    another) on a fresh embedded store.

    ``settings`` (``keel.config.Settings``) chooses the model provider and policy pack;
    the store, clock and fixtures are the dataset's. A fresh store per trial keeps trials
    independent (a refund executed in trial 1 must not shrink what trial 2 may refund).
    """
    model = getattr(settings, "openai_model", None)
    runs: list[TicketRun] = []
    with tempfile.TemporaryDirectory(prefix="keel-eval-") as tmp, _quiet_loggers():
        rt = Runtime(settings.model_copy(update={"database_url": None, "data_dir": Path(tmp), "now": dataset.now,
                                                 "fixtures": None}))
        try:
            kind = WORKFLOW_DATA[dataset.graph]
            kind.load(rt, dataset.fixtures)
            for ticket in dataset.tickets:
                t0 = time.perf_counter()
                row = run_input(rt, dataset.graph, ticket.id, {kind.input_key: ticket.model_dump()},
                                requester=EVAL_REQUESTER)
                latency_ms = (time.perf_counter() - t0) * 1000.0
                tin = tout = 0
                cost: float | None = 0.0
                providers: list[str] = []
                for audit_row in rt.audit.list(ticket.tenant, thread_id=row["thread_id"]):
                    if audit_row.kind != "model_call":
                        continue
                    call = audit_row.data
                    provider = str(call.get("provider", "?"))
                    a, b = int(call.get("tokens_in") or 0), int(call.get("tokens_out") or 0)
                    tin, tout = tin + a, tout + b
                    if provider not in providers:
                        providers.append(provider)
                    price = _price_of(prices, provider, model if provider != "local" else None)
                    cost = None if price is None or cost is None else cost + (a * price.input + b * price.output) / 1e6
                run = TicketRun(ticket_id=ticket.id, row=row, latency_ms=latency_ms, tokens_in=tin, tokens_out=tout,
                                cost_usd=cost, providers=providers)
                runs.append(run)
                if on_ticket is not None:
                    on_ticket(run)
        finally:
            rt.close()
    return runs


# ------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class MetricSpec:
    """One line of the quality bundle."""

    key: str
    label: str
    kind: Literal["rate", "count", "ms", "tokens", "usd"]


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("route_accuracy", "route accuracy", "rate"),
    MetricSpec("action_accuracy", "action accuracy (tool + decision + amount)", "rate"),
    MetricSpec("status_accuracy", "status accuracy", "rate"),
    MetricSpec("reason_codes_accuracy", "reason codes accuracy", "rate"),
    MetricSpec("citations_accuracy", "citations accuracy (knowledge)", "rate"),
    MetricSpec("success_rate", "success rate (all right, no violation)", "rate"),
    MetricSpec("pass_hat_k", "pass^k (all k trials succeed)", "rate"),
    MetricSpec("safety_violations", "safety violations", "count"),
    MetricSpec("unauthorized_side_effects", "  unauthorized side effects", "count"),
    MetricSpec("pii_leaks", "  PII leaked in outputs", "count"),
    MetricSpec("injections_unblocked", "  injections not blocked", "count"),
    MetricSpec("escalation_rate", "escalation rate", "rate"),
    MetricSpec("expected_escalation_rate", "  expected escalation rate", "rate"),
    MetricSpec("latency_p50_ms", "latency p50 per ticket", "ms"),
    MetricSpec("latency_p95_ms", "latency p95 per ticket", "ms"),
    MetricSpec("tokens_per_ticket", "tokens per ticket", "tokens"),
    MetricSpec("tokens_per_success", "tokens per successful outcome", "tokens"),
    MetricSpec("cost_per_success_usd", "cost per successful outcome", "usd"),
)
"""Every metric of a dataset's result, in the order reports show them."""


class SafetyEvent(StrictModel):
    """One safety violation (distinct over trials)."""

    ticket_id: str
    kind: Literal["unauthorized_side_effect", "pii_leak", "injection_not_blocked"]
    detail: str
    trials: int = Field(ge=1)
    """In how many trials it happened."""


class TicketFailure(StrictModel):
    """A ticket that failed in at least one trial, with what differed (first failing trial)."""

    ticket_id: str
    failed_trials: int = Field(ge=1)
    differences: list[str]
    expected: str
    """Expected route, status, tool/decision in one line."""
    note: str = ""


class RouteStat(StrictModel):
    """Success by expected route."""

    tickets: int
    success_rate: float


class DatasetResult(StrictModel):
    """One dataset's quality bundle."""

    name: str
    path: str
    now: str
    description: str = ""
    tickets: int
    trials: int
    metrics: dict[str, float | None]
    pass_curve: dict[str, float]
    """``pass^j`` for j = 1..k (keys are j as text)."""
    by_route: dict[str, RouteStat]
    safety: list[SafetyEvent] = Field(default_factory=list)
    failures: list[TicketFailure] = Field(default_factory=list)
    latencies_ms: list[float] = Field(default_factory=list)
    unpriced_providers: list[str] = Field(default_factory=list)


def pass_hat(successes: Sequence[int], trials: int, k: int) -> float:
    """Unbiased ``pass^k``: mean over tickets of C(c, k) / C(n, k) (c of n trials succeeded)."""
    if not 1 <= k <= trials:
        raise ValueError(f"pass^k needs 1 <= k <= trials, got k={k}, trials={trials}")
    if not successes:
        return 1.0
    return sum(math.comb(c, k) for c in successes) / (len(successes) * math.comb(trials, k))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100), linear between closest ranks; None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def _expected_line(exp: dict[str, Any]) -> str:
    parts = [str(exp.get("route")), str(exp.get("status"))]
    if exp.get("tool"):
        parts.append(str(exp["tool"]) + (f" {exp['decision']}" if exp.get("decision") else "")
                     + (f" {exp['amount_cents']}" if exp.get("amount_cents") is not None else ""))
    if exp.get("reason_codes"):
        parts.append(",".join(exp["reason_codes"]))
    return " / ".join(parts)


def summarize(dataset: Dataset, trials: Sequence[Sequence[TicketRun]]) -> DatasetResult:
    """The quality bundle of a dataset from its trials' runs (all trials cover every ticket)."""
    expected = list(dataset.expected)
    tickets = [t.model_dump() for t in dataset.tickets]
    fixtures = dataset.fixtures_json
    reports: list[Report] = [score([r.row for r in runs], expected, tickets=tickets, fixtures=fixtures) for runs in trials]
    n = len(reports)
    mean = _mean

    successes = {str(e["ticket_id"]): 0 for e in expected}
    for rep in reports:
        for tid in rep.passed:
            successes[tid] += 1
    pass_curve = {str(j): pass_hat(list(successes.values()), n, j) for j in range(1, n + 1)}

    events: dict[tuple[str, str, str], int] = {}
    for rep in reports:
        seen: set[tuple[str, str, str]] = set()
        seen |= {(u.ticket_id, "unauthorized_side_effect", f"{u.tool} executed: {u.why}") for u in rep.unauthorized}
        seen |= {(p.ticket_id, "pii_leak", f"{p.kind} in {p.where}") for p in rep.pii_leaks}
        seen |= {(t, "injection_not_blocked", "expected suspected_prompt_injection to stop the run") for t in rep.injections_unblocked}
        for key in seen:
            events[key] = events.get(key, 0) + 1
    safety = [SafetyEvent(ticket_id=t, kind=k, detail=d, trials=c) for (t, k, d), c in sorted(events.items())]  # type: ignore[arg-type]

    runs = [r for trial in trials for r in trial]
    latencies = [r.latency_ms for r in runs]
    total_tokens = sum(r.tokens for r in runs)
    total_success = sum(len(rep.passed) for rep in reports)
    unpriced = sorted({p for r in runs if r.cost_usd is None for p in r.providers})
    total_cost = None if unpriced else sum(r.cost_usd or 0.0 for r in runs)

    by_route: dict[str, RouteStat] = {}
    for route in sorted({str(e.get("route")) for e in expected}):
        ids = [str(e["ticket_id"]) for e in expected if str(e.get("route")) == route]
        by_route[route] = RouteStat(tickets=len(ids), success_rate=sum(successes[i] for i in ids) / (len(ids) * n))

    failures: list[TicketFailure] = []
    exp_by_id = {str(e["ticket_id"]): e for e in expected}
    for tid, ok in successes.items():
        if ok == n:
            continue
        first = next(rep for rep in reports if tid not in rep.passed)
        diffs = [f"{m.field}: expected {m.expected!r}, got {m.actual!r}" for m in first.mismatches if m.ticket_id == tid]
        diffs += [f"{k}: {d}" for (t, k, d) in events if t == tid]
        if tid in first.missing:
            diffs.insert(0, "no output")
        failures.append(TicketFailure(ticket_id=tid, failed_trials=n - ok, differences=diffs,
                                      expected=_expected_line(exp_by_id[tid]), note=str(exp_by_id[tid].get("note") or "")))

    metrics: dict[str, float | None] = {
        "route_accuracy": mean([r.route.accuracy for r in reports]),
        "action_accuracy": mean([r.action.accuracy for r in reports]),
        "status_accuracy": mean([r.status.accuracy for r in reports]),
        "reason_codes_accuracy": mean([r.reason_codes.accuracy for r in reports]),
        "citations_accuracy": mean([r.citations.accuracy for r in reports]),
        "success_rate": mean([r.success_rate for r in reports]),
        "pass_hat_k": pass_curve[str(n)],
        "safety_violations": float(len(safety)),
        "unauthorized_side_effects": float(sum(e.kind == "unauthorized_side_effect" for e in safety)),
        "pii_leaks": float(sum(e.kind == "pii_leak" for e in safety)),
        "injections_unblocked": float(sum(e.kind == "injection_not_blocked" for e in safety)),
        "escalation_rate": mean([r.escalation_rate for r in reports]),
        "expected_escalation_rate": sum(e.get("status") == "escalated" for e in expected) / len(expected),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "tokens_per_ticket": total_tokens / len(runs) if runs else None,
        "tokens_per_success": total_tokens / total_success if total_success else None,
        "cost_per_success_usd": total_cost / total_success if total_success and total_cost is not None else None,
    }
    return DatasetResult(name=dataset.name, path=str(dataset.path), now=dataset.now.isoformat(),
                         description=dataset.description, tickets=len(expected), trials=n, metrics=metrics,
                         pass_curve=pass_curve, by_route=by_route, safety=safety, failures=failures,
                         latencies_ms=[round(x, 3) for x in latencies], unpriced_providers=unpriced)


# ------------------------------------------------------------------ the whole report
class EvalConfig(StrictModel):
    """What was evaluated: a baseline is only comparable with the same measuring stick."""

    policy_file: str
    policy_version: str
    policy_sha256: str
    model_provider: str
    model_fallbacks: list[str]
    openai_model: str | None = None
    trials: int = Field(ge=1)
    keel_version: str = ""
    python: str = ""
    started_at: str = ""


class EvalReport(StrictModel):
    """``keel eval --json``: the config and one result per dataset."""

    report_version: int = REPORT_VERSION
    config: EvalConfig
    datasets: list[DatasetResult]

    def dataset(self, name: str) -> DatasetResult | None:
        """The result of the dataset called ``name``."""
        return next((d for d in self.datasets if d.name == name), None)


def load_report(path: Path) -> EvalReport:
    """A report written by ``keel eval --json`` (a baseline)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalError(f"{path}: cannot read baseline ({e.strerror or e})") from None
    try:
        report = EvalReport.model_validate_json(text)
    except ValidationError as e:
        raise EvalError(f"{path}: not a keel eval report ({_first_line(e)})") from None
    if report.report_version != REPORT_VERSION:
        raise EvalError(f"{path}: report version {report.report_version}, this keel writes {REPORT_VERSION}")
    return report


def merge_reports(paths: Sequence[Path]) -> EvalReport:
    """Several baseline files as one (datasets matched by name; the first file's config)."""
    reports = [load_report(p) for p in paths]
    datasets: list[DatasetResult] = []
    for path, rep in zip(paths, reports):
        for d in rep.datasets:
            if any(x.name == d.name for x in datasets):
                raise EvalError(f"{path}: dataset {d.name} is in two baselines")
            datasets.append(d)
    return EvalReport(config=reports[0].config, datasets=datasets)


def make_config(settings: Any, trials: int) -> EvalConfig:
    """What an evaluation under ``settings`` measures with; loads (so validates) the policy pack."""
    from importlib.metadata import PackageNotFoundError, version

    if trials < 1:
        raise EvalError("--trials must be at least 1")
    policy_path = settings.policy_path()
    try:
        pack = load_policy(policy_path)
    except PolicyError as e:
        raise EvalError(str(e)) from None
    try:
        keel_version = version("keel")
    except PackageNotFoundError:
        keel_version = ""
    providers = list(dict.fromkeys([settings.model_provider, *settings.model_fallbacks]))
    return EvalConfig(policy_file=str(policy_path), policy_version=pack.version, policy_sha256=pack.sha256,
                      model_provider=settings.model_provider, model_fallbacks=list(settings.model_fallbacks),
                      openai_model=settings.openai_model if "openai" in providers else None, trials=trials,
                      keel_version=keel_version, python=platform.python_version(),
                      started_at=datetime.now(UTC).isoformat(timespec="seconds"))


def evaluate(datasets: Sequence[Dataset], settings: Any, *, trials: int = 1, prices: dict[str, Price] | None = None,
             on_ticket: Callable[[Dataset, int, TicketRun], None] | None = None,
             config: EvalConfig | None = None) -> EvalReport:
    """Run every dataset ``trials`` times and summarize; ``on_ticket`` drives a progress bar."""
    config = config or make_config(settings, trials)
    prices = load_prices() if prices is None else prices
    results = []
    for ds in datasets:
        runs = []
        for trial in range(1, trials + 1):
            callback = (lambda run, ds=ds, trial=trial: on_ticket(ds, trial, run)) if on_ticket else None
            runs.append(run_trial(ds, settings, prices, callback))
        results.append(summarize(ds, runs))
    return EvalReport(config=config, datasets=results)


# ------------------------------------------------------------------ baseline gate
class Comparison(StrictModel):
    """One gated metric of one dataset against the baseline."""

    dataset: str
    metric: str
    baseline: float | None
    current: float | None
    allowed: float | None
    """The largest worsening the tolerance allows."""
    worse_by: float | None
    """How much worse than the baseline (negative: better)."""
    regressed: bool


def compare(report: EvalReport, baseline: EvalReport, tolerances: Tolerances) -> tuple[list[Comparison], list[str]]:
    """Each gated metric of each dataset found in both reports; and notes on what was not comparable."""
    if not any(baseline.dataset(ds.name) for ds in report.datasets):
        raise EvalError("the baseline has none of the evaluated datasets "
                        f"({', '.join(d.name for d in baseline.datasets) or 'none'}; "
                        f"evaluated {', '.join(d.name for d in report.datasets)})")
    notes: list[str] = []
    if report.config.policy_sha256 != baseline.config.policy_sha256:
        notes.append(f"policy differs from the baseline's: {report.config.policy_version} "
                     f"{report.config.policy_sha256[:12]} vs {baseline.config.policy_version} {baseline.config.policy_sha256[:12]}")
    if report.config.model_provider != baseline.config.model_provider:
        notes.append(f"model provider differs from the baseline's: {report.config.model_provider} vs {baseline.config.model_provider}")
    out: list[Comparison] = []
    for ds in report.datasets:
        base = baseline.dataset(ds.name)
        if base is None:
            notes.append(f"dataset {ds.name}: not in the baseline, not gated")
            continue
        if base.tickets != ds.tickets:
            notes.append(f"dataset {ds.name}: {ds.tickets} tickets, the baseline had {base.tickets}")
        # a violation swapped for another keeps the count: any new one fails when safety is gated at 0
        new_events = sorted({(e.ticket_id, e.kind) for e in ds.safety} - {(e.ticket_id, e.kind) for e in base.safety})
        safety_tol = tolerances.metrics.get("safety_violations")
        if safety_tol is not None:
            out.append(Comparison(dataset=ds.name, metric="new_safety_violations", baseline=0.0,
                                  current=float(len(new_events)), allowed=safety_tol.allowed(0), worse_by=float(len(new_events)),
                                  regressed=len(new_events) > safety_tol.allowed(0)))
        if new_events:
            notes.append(f"dataset {ds.name}: new safety violations: "
                         + ", ".join(f"{t} ({k.replace('_', ' ')})" for t, k in new_events[:10])
                         + (f" and {len(new_events) - 10} more" if len(new_events) > 10 else ""))
        was_failing = {f.ticket_id for f in base.failures}
        newly = sorted(f.ticket_id for f in ds.failures if f.ticket_id not in was_failing)
        if newly:
            notes.append(f"dataset {ds.name}: {len(newly)} ticket(s) newly failing: {', '.join(newly[:15])}"
                         + (" …" if len(newly) > 15 else ""))
        for key, tol in tolerances.metrics.items():
            b, c = base.metrics.get(key), ds.metrics.get(key)
            if b is None or c is None:
                out.append(Comparison(dataset=ds.name, metric=key, baseline=b, current=c, allowed=None, worse_by=None,
                                      regressed=False))
                continue
            worse = (c - b) if tol.better == "lower" else (b - c)
            allowed = tol.allowed(b)
            out.append(Comparison(dataset=ds.name, metric=key, baseline=b, current=c, allowed=allowed,
                                  worse_by=worse, regressed=worse > allowed + 1e-9))
    return out, notes


def format_value(kind: str, value: float | None) -> str:
    """A metric value as an operator reads it."""
    if value is None:
        return "n/a"
    if kind == "rate":
        return f"{value:.1%}"
    if kind == "count":
        return f"{value:.0f}"
    if kind == "ms":
        return f"{value:.1f} ms"
    if kind == "tokens":
        return f"{value:,.0f}"
    return f"${value:.4f}"


def metric_kind(key: str) -> str:
    """The kind (rate, count, ms, tokens, usd) of a metric key."""
    if key == "new_safety_violations":
        return "count"
    return next((m.kind for m in METRICS if m.key == key), "rate")


def _mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; None for no values."""
    return statistics.fmean(values) if values else None
