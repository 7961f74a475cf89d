"""How ``keel eval`` shows a report: rich tables on the terminal and one self-contained HTML page.

The HTML page has no script and loads nothing: its CSS and SVG charts are inline, so it can
be attached to a ticket or a CI run and opened anywhere. Every value that came from data
(ticket ids, notes, reason codes) is escaped: tickets are untrusted text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from rich.console import Console
from rich.table import Table

from evals.report import (
    METRICS,
    Comparison,
    DatasetResult,
    EvalReport,
    format_value,
    metric_kind,
)

__all__ = ["PALETTE", "print_comparison", "print_report", "render_html"]

PALETTE = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2")
"""One colour per dataset, in report order (charts and legend)."""


def _column_title(d: DatasetResult) -> str:
    return f"{d.name}\n{d.tickets} tickets × {d.trials}"


def print_report(console: Console, report: EvalReport, *, verbose: bool = False, limit: int = 15) -> None:
    """The quality bundle, datasets side by side; safety violations always, failures with ``verbose``."""
    cfg = report.config
    table = Table(title=f"keel eval: policy {cfg.policy_version} ({cfg.policy_sha256[:12]}), "
                        f"model {cfg.model_provider}{' ' + cfg.openai_model if cfg.openai_model else ''}, "
                        f"{cfg.trials} trial{'s' if cfg.trials > 1 else ''}")
    table.add_column("metric")
    for d in report.datasets:
        table.add_column(_column_title(d), justify="right")
    for spec in METRICS:
        label = spec.label.replace("pass^k", f"pass^{cfg.trials}").replace("all k", f"all {cfg.trials}")
        cells = []
        for d in report.datasets:
            value = d.metrics.get(spec.key)
            text = format_value(spec.kind, value)
            if spec.kind == "count" and value:
                text = f"[bold red]{text}[/]"
            cells.append(text)
        table.add_row(label, *cells)
    console.print(table)
    routes = sorted({r for d in report.datasets for r in d.by_route})
    if routes:
        rt = Table(title="success rate by expected route")
        rt.add_column("route")
        for d in report.datasets:
            rt.add_column(d.name, justify="right")
        for r in routes:
            rt.add_row(r, *[(f"{d.by_route[r].success_rate:.1%} of {d.by_route[r].tickets}" if r in d.by_route else "-")
                            for d in report.datasets])
        console.print(rt)
    for d in report.datasets:
        if d.unpriced_providers:
            console.print(f"[yellow]{d.name}: no price for {', '.join(d.unpriced_providers)} (evals/prices.toml): cost n/a[/]")
        if d.safety:
            console.print(f"[bold red]{d.name}: {len(d.safety)} safety violation(s)[/]")
            for e in d.safety[:limit]:
                console.print(f"  {e.ticket_id}: {e.kind.replace('_', ' ')}: {e.detail} ({e.trials}/{d.trials} trials)",
                              markup=False, highlight=False)
            if len(d.safety) > limit:
                console.print(f"  … {len(d.safety) - limit} more in --json/--html")
        if verbose and d.failures:
            console.print(f"[bold]{d.name}: {len(d.failures)} ticket(s) failed[/]")
            for f in d.failures:
                console.print(f"  {f.ticket_id} (expected {f.expected}): {'; '.join(f.differences)}", markup=False,
                              highlight=False)
        elif d.failures:
            console.print(f"{d.name}: {len(d.failures)} ticket(s) failed (list with --verbose, --json or --html)")


def print_comparison(console: Console, comparisons: Sequence[Comparison], notes: Sequence[str]) -> None:
    """The baseline gate: regressions first, then a one-line verdict."""
    for n in notes:
        console.print(f"[yellow]note: {n}[/]", highlight=False)
    regressed = [c for c in comparisons if c.regressed]
    table = Table(title="baseline gate: regressions" if regressed else "baseline gate")
    for col in ("dataset", "metric", "baseline", "current", "worse by", "allowed", ""):
        table.add_column(col, justify="left" if col in ("dataset", "metric") else "right")
    for c in regressed or comparisons:
        kind = metric_kind(c.metric)
        worse = "n/a" if c.worse_by is None else (format_value(kind, c.worse_by) if c.worse_by > 0 else "-")
        table.add_row(c.dataset, c.metric, format_value(kind, c.baseline), format_value(kind, c.current), worse,
                      format_value(kind, c.allowed), "[bold red]REGRESSED[/]" if c.regressed else "[green]ok[/]")
    console.print(table)
    if regressed:
        console.print(f"[bold red]baseline gate FAILED: {len(regressed)} metric(s) regressed past tolerance[/]")
    else:
        console.print(f"[green]baseline gate passed ({len(comparisons)} metrics within tolerance)[/]")


# ------------------------------------------------------------------ HTML
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.meta{color:#6b7280;font-size:13px}table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border-bottom:1px solid #e5e7eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b91c1c;font-weight:600}.ok{color:#047857}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
code{font-size:12px;background:#f3f4f6;padding:1px 4px;border-radius:3px}details{margin:6px 0}
svg text{font:11px system-ui,sans-serif;fill:#374151}
"""


def _legend(report: EvalReport) -> str:
    items = "".join(f'<span><i class="sw" style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(d.name)}</span>'
                    for i, d in enumerate(report.datasets))
    return f'<p class="legend">{items}</p>'


def _bars(groups: Sequence[tuple[str, Sequence[float | None]]], *, width: int = 1000, unit: str = "%",
          vmax: float | None = None) -> str:
    """Grouped vertical bars (one group per label, one bar per dataset) as inline SVG."""
    if not groups:
        return ""
    k = max(1, max(len(v) for _, v in groups))
    top = vmax if vmax is not None else max([x for _, vs in groups for x in vs if x is not None] + [1e-9])
    h, pad_l, pad_b, pad_t = 220, 40, 54, 16
    gw = (width - pad_l) / len(groups)
    bw = max(4.0, min(36.0, (gw - 16) / k))
    parts = [f'<svg width="{width}" height="{h + pad_b + pad_t}" role="img">']
    for i in range(5):
        y = pad_t + h - h * i / 4
        label = f"{top * i / 4 * (100 if unit == '%' else 1):.0f}{unit if unit == '%' else ''}"
        parts.append(f'<line x1="{pad_l}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for gi, (label, values) in enumerate(groups):
        x0 = pad_l + gi * gw + (gw - bw * len(values)) / 2
        for vi, v in enumerate(values):
            if v is None:
                continue
            bh = h * (v / top if top else 0)
            x, y = x0 + vi * bw, pad_t + h - bh
            shown = f"{v:.1%}" if unit == "%" else f"{v:.1f}{unit}"
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                         f'fill="{PALETTE[vi % len(PALETTE)]}"><title>{escape(label)}: {escape(shown)}</title></rect>')
        lines = label.split("\n")
        for li, line in enumerate(lines):
            parts.append(f'<text x="{pad_l + gi * gw + gw / 2:.1f}" y="{pad_t + h + 16 + li * 13}" '
                         f'text-anchor="middle">{escape(line)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(report: EvalReport, *, width: int = 1000, bins: int = 24) -> str:
    """Latency distribution per dataset (share of tickets per bin, log-scaled bins) as inline SVG.

    Log bins: a few slow outliers would otherwise squeeze every ordinary ticket into one bar.
    """
    all_ms = [max(x, 0.01) for d in report.datasets for x in d.latencies_ms]
    if not all_ms:
        return ""
    lo, hi = math.log10(min(all_ms)), math.log10(max(all_ms))
    span = (hi - lo) or 1.0
    h, pad_l, pad_b, pad_t = 160, 40, 30, 10
    counts = []
    for d in report.datasets:
        c = [0] * bins
        for x in d.latencies_ms:
            c[min(bins - 1, int((math.log10(max(x, 0.01)) - lo) / span * bins))] += 1
        total = len(d.latencies_ms) or 1
        counts.append([v / total for v in c])
    top = max(max(c) for c in counts) or 1.0
    bw = (width - pad_l - 20) / bins
    parts = [f'<svg width="{width}" height="{h + pad_b + pad_t}" role="img">',
             f'<line x1="{pad_l}" x2="{width - 20}" y1="{pad_t + h}" y2="{pad_t + h}" stroke="#9ca3af"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end">{top:.0%}</text>']
    for di, c in enumerate(counts):
        pts = []
        for i, v in enumerate(c):
            y = pad_t + h - h * v / top
            pts += [f"{pad_l + i * bw:.1f},{y:.1f}", f"{pad_l + (i + 1) * bw:.1f},{y:.1f}"]
        parts.append(f'<polyline fill="none" stroke-width="2" stroke="{PALETTE[di % len(PALETTE)]}" points="{" ".join(pts)}"/>')
    for i in range(0, bins + 1, max(1, bins // 6)):
        ms = 10 ** (lo + span * i / bins)
        label = f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"
        parts.append(f'<text x="{pad_l + i * bw:.1f}" y="{pad_t + h + 16}" text-anchor="middle">{label} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def _metric_table(report: EvalReport) -> str:
    head = "".join(f"<th>{escape(d.name)}<br><span class=meta>{d.tickets} tickets × {d.trials}</span></th>"
                   for d in report.datasets)
    rows = []
    for spec in METRICS:
        cells = []
        for d in report.datasets:
            v = d.metrics.get(spec.key)
            cls = "n bad" if spec.kind == "count" and v else "n"
            cells.append(f'<td class="{cls}">{escape(format_value(spec.kind, v))}</td>')
        label = spec.label.strip().replace("pass^k", f"pass^{report.config.trials}").replace("all k", f"all {report.config.trials}")
        indent = "&nbsp;&nbsp;&nbsp;" if spec.label.startswith("  ") else ""
        rows.append(f"<tr><td>{indent}{escape(label)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _comparison_table(comparisons: Sequence[Comparison], notes: Sequence[str]) -> str:
    regressed = [c for c in comparisons if c.regressed]
    verdict = (f'<p class="bad">FAILED: {len(regressed)} metric(s) regressed past tolerance</p>' if regressed
               else f'<p class="ok">passed: {len(comparisons)} metrics within tolerance</p>')
    rows = []
    for c in sorted(comparisons, key=lambda c: not c.regressed):  # regressions first, else report order
        kind = metric_kind(c.metric)
        worse = "n/a" if c.worse_by is None else (format_value(kind, c.worse_by) if c.worse_by > 0 else "-")
        state = '<span class="bad">REGRESSED</span>' if c.regressed else '<span class="ok">ok</span>'
        rows.append(f"<tr><td>{escape(c.dataset)}</td><td>{escape(c.metric)}</td>"
                    f'<td class="n">{escape(format_value(kind, c.baseline))}</td>'
                    f'<td class="n">{escape(format_value(kind, c.current))}</td><td class="n">{escape(worse)}</td>'
                    f'<td class="n">{escape(format_value(kind, c.allowed))}</td><td>{state}</td></tr>')
    note_html = "".join(f"<p class=meta>note: {escape(n)}</p>" for n in notes)
    return (f"{verdict}{note_html}<table><tr><th>dataset</th><th>metric</th><th>baseline</th><th>current</th>"
            f"<th>worse by</th><th>allowed</th><th></th></tr>{''.join(rows)}</table>")


def _dataset_details(d: DatasetResult) -> str:
    parts = [(f"<h2>{escape(d.name)}</h2><p class=meta>{escape(d.path)}, clock {escape(d.now)}"
              f"{' — ' + escape(d.description) if d.description else ''}</p>")]
    if d.safety:
        rows = "".join(f"<tr><td><code>{escape(e.ticket_id)}</code></td><td>{escape(e.kind.replace('_', ' '))}</td>"
                       f'<td>{escape(e.detail)}</td><td class="n">{e.trials}/{d.trials}</td></tr>' for e in d.safety)
        parts.append(f'<h3 class="bad">{len(d.safety)} safety violation(s)</h3><table><tr><th>ticket</th><th>kind</th>'
                     f"<th>detail</th><th>trials</th></tr>{rows}</table>")
    else:
        parts.append('<p class="ok">No safety violations.</p>')
    if d.failures:
        rows = "".join(f"<tr><td><code>{escape(f.ticket_id)}</code></td><td>{escape(f.expected)}</td>"
                       f"<td>{'<br>'.join(escape(x) for x in f.differences)}</td>"
                       f'<td class="n">{f.failed_trials}/{d.trials}</td><td class=meta>{escape(f.note)}</td></tr>'
                       for f in d.failures)
        parts.append(f"<details><summary>{len(d.failures)} ticket(s) not handled right in every trial</summary>"
                     f"<table><tr><th>ticket</th><th>expected</th><th>what differed</th><th>failed</th><th>note</th></tr>"
                     f"{rows}</table></details>")
    return "".join(parts)


def render_html(report: EvalReport, comparisons: Sequence[Comparison] | None = None,
                notes: Sequence[str] = ()) -> str:
    """The whole report as one HTML page with no external resource and no script."""
    cfg = report.config
    k = cfg.trials
    quality = [(label, [d.metrics.get(key) for d in report.datasets]) for key, label in (
        ("route_accuracy", "route"), ("action_accuracy", "action"), ("status_accuracy", "status"),
        ("reason_codes_accuracy", "reason codes"), ("success_rate", "success"), ("pass_hat_k", f"pass^{k}"),
        ("escalation_rate", "escalation\nrate"), ("expected_escalation_rate", "expected\nescalation"))]
    routes = sorted({r for d in report.datasets for r in d.by_route})
    by_route = [(f"{r}", [d.by_route[r].success_rate if r in d.by_route else None for d in report.datasets]) for r in routes]
    curve = [(f"pass^{j}", [d.pass_curve.get(str(j)) for d in report.datasets]) for j in range(1, k + 1)] if k > 1 else []
    latency = [(label, [d.metrics.get(key) for d in report.datasets])
               for key, label in (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"))]
    gate = f"<h2>Baseline gate</h2>{_comparison_table(comparisons, notes)}" if comparisons is not None else ""
    sections = [
        (f"<h1>keel eval</h1><p class=meta>policy {escape(cfg.policy_version)} "
         f"(<code>{escape(cfg.policy_sha256[:12])}</code>, {escape(cfg.policy_file)}), "
         f"model {escape(cfg.model_provider)}{' ' + escape(cfg.openai_model) if cfg.openai_model else ''}, "
         f"{k} trial{'s' if k > 1 else ''}, keel {escape(cfg.keel_version)}, {escape(cfg.started_at)}</p>"),
        gate,
        "<h2>Quality</h2>", _legend(report), _bars(quality, vmax=1.0),
        _metric_table(report),
        "<h2>Success rate by expected route</h2>", _legend(report), _bars(by_route, vmax=1.0),
    ]
    if curve:
        sections += ["<h2>pass^j over the trials</h2>", _bars(curve, vmax=1.0)]
    sections += ["<h2>Latency per ticket</h2>", _legend(report), _bars(latency, unit=" ms"),
                 "<p class=meta>Share of tickets by latency (log scale):</p>", _histogram(report)]
    sections += [_dataset_details(d) for d in report.datasets]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>keel eval: {escape(', '.join(d.name for d in report.datasets))}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(sections)}</body></html>\n")
