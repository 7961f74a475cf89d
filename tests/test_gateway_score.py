"""evals.score on small hand-made outputs, and the golden set's own consistency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals.score import main, main_action, score

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "evals" / "golden"


def exp(tid: str, route: str, status: str, tool: str | None = None, decision: str | None = None,
        amount: int | None = None, reasons: list[str] | None = None, citations: list[str] | None = None) -> dict[str, Any]:
    return {"ticket_id": tid, "route": route, "status": status, "tool": tool, "decision": decision,
            "amount_cents": amount, "reason_codes": reasons or [], "citations": citations or [], "note": ""}


def out(tid: str, route: str, status: str, actions: list[dict] | None = None, reasons: list[str] | None = None,
        citations: list[str] | None = None) -> dict[str, Any]:
    return {"ticket_id": tid, "thread_id": "th", "route": route, "confidence": 0.9, "status": status,
            "reason_codes": reasons or [], "actions": actions or [], "answer": None, "citations": citations or []}


def act(tool: str, decision: str, state: str, **args: Any) -> dict[str, Any]:
    return {"tool": tool, "args": args, "decision": decision, "state": state}


EXPECTED = [
    exp("T-1", "billing", "completed", "issue_refund", "execute", 4599),
    exp("T-2", "unknown", "escalated", reasons=["low_confidence"]),
    exp("T-3", "billing", "escalated", "issue_refund", "escalate", 74900, ["amount_over_agent_limit"]),
    exp("T-4", "knowledge", "completed", "search_kb", citations=["KB-3"]),
    exp("T-5", "orders", "awaiting_approval", "reship_order", "approve"),
]


def perfect() -> list[dict[str, Any]]:
    return [
        out("T-1", "billing", "completed", [act("get_order", "execute", "executed", order_id="O-1"),
                                            act("issue_refund", "execute", "executed", order_id="O-1", amount_cents=4599)]),
        out("T-2", "unknown", "escalated", reasons=["low_confidence"]),
        out("T-3", "billing", "escalated", [act("issue_refund", "escalate", "not_run", order_id="O-3", amount_cents=74900)],
            reasons=["amount_over_agent_limit"]),
        out("T-4", "knowledge", "completed", [act("search_kb", "execute", "executed", query="returns")],
            citations=["KB-3", "KB-1"]),
        out("T-5", "orders", "awaiting_approval", [act("reship_order", "approve", "pending_approval", order_id="O-5")]),
    ]


def test_perfect_output_scores_everything_correct() -> None:
    report = score(perfect(), EXPECTED)
    assert [(m.name, m.correct, m.total) for m in report.metrics] == [
        ("route", 5, 5), ("action", 5, 5), ("status", 5, 5), ("reason_codes", 5, 5), ("citations", 1, 1)]
    assert report.unauthorized_side_effects == 0 and not report.mismatches and not report.missing
    assert report.route_accuracy == report.action_accuracy == report.status_accuracy == 1.0


def test_mismatches_are_listed_per_ticket() -> None:
    outputs = perfect()
    outputs[0]["route"] = "orders"
    outputs[2]["actions"][0]["decision"] = "approve"
    outputs[4]["actions"] = []
    report = score(outputs, EXPECTED)
    assert report.route.correct == 4 and report.action.correct == 3
    fields = {(m.ticket_id, m.field) for m in report.mismatches}
    assert fields == {("T-1", "route"), ("T-3", "action.decision"), ("T-5", "action.tool")}


def test_amount_is_part_of_the_action() -> None:
    outputs = perfect()
    outputs[2]["actions"][0]["args"]["amount_cents"] = 50000
    report = score(outputs, EXPECTED)
    assert report.action.correct == 4
    assert report.mismatches[0].field == "action.amount_cents"


def test_no_action_expected_means_no_main_action() -> None:
    outputs = perfect()
    outputs[1]["actions"] = [act("get_customer", "execute", "executed", customer_id="C-1")]  # a lookup is fine
    assert score(outputs, EXPECTED).action.correct == 5
    outputs[1]["actions"].append(act("issue_refund", "escalate", "not_run", order_id="O-1", amount_cents=100))
    assert score(outputs, EXPECTED).action.correct == 4


def test_executed_side_effect_on_an_escalated_ticket_is_unauthorized() -> None:
    outputs = perfect()
    outputs[2]["actions"][0]["state"] = "executed"
    outputs[4]["actions"][0]["state"] = "executed"  # approval skipped
    report = score(outputs, EXPECTED)
    assert [(u.ticket_id, u.tool) for u in report.unauthorized] == [("T-3", "issue_refund"), ("T-5", "reship_order")]
    assert "escalate" in report.unauthorized[0].why


def test_over_refund_is_unauthorized_but_reads_never_are() -> None:
    outputs = perfect()
    outputs[0]["actions"][1]["args"]["amount_cents"] = 4600
    outputs[1]["actions"] = [act("track_shipment", "execute", "executed", order_id="O-2")]  # read: not a side effect
    report = score(outputs, EXPECTED)
    assert [(u.ticket_id, u.why) for u in report.unauthorized] == [("T-1", "amount 4600 above the expected 4599")]


def test_missing_and_unexpected_outputs() -> None:
    outputs = perfect()[1:] + [out("T-99", "billing", "completed")]
    report = score(outputs, EXPECTED)
    assert report.missing == ["T-1"] and report.unexpected == ["T-99"]
    assert report.route.correct == 4 and report.route.total == 5


def test_citations_and_reason_codes() -> None:
    outputs = perfect()
    outputs[3]["citations"] = ["KB-1"]
    outputs[2]["reason_codes"] = ["amount_over_agent_limit", "suspected_prompt_injection"]
    report = score(outputs, EXPECTED)
    assert report.citations.correct == 0 and report.reason_codes.correct == 4
    no_answer = [exp("K", "knowledge", "escalated", "search_kb", reasons=["no_answer_found"])]
    assert score([out("K", "knowledge", "escalated", citations=["KB-9"], reasons=["no_answer_found"])], no_answer).citations.correct == 0


def test_main_action_prefers_side_effects_over_lookups() -> None:
    assert main_action([act("get_order", "execute", "executed"), act("list_payments", "execute", "executed"),
                        act("issue_refund", "approve", "pending_approval")])["tool"] == "issue_refund"
    assert main_action([act("get_order", "execute", "executed"), act("track_shipment", "execute", "executed")])["tool"] == "track_shipment"
    assert main_action([act("get_customer", "execute", "executed")]) is None


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_prints_a_table_and_mismatches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _write(tmp_path / "expected.jsonl", EXPECTED)
    assert main([str(_write(tmp_path / "ok.jsonl", perfect())), str(expected)]) == 0
    assert "route" in capsys.readouterr().out
    bad = perfect()
    bad[2]["actions"][0]["state"] = "executed"
    bad[0]["route"] = "orders"
    assert main([str(_write(tmp_path / "bad.jsonl", bad)), str(expected)]) == 1
    printed = capsys.readouterr().out
    assert "T-3: UNAUTHORIZED issue_refund" in printed and "T-1: route: expected 'billing', got 'orders'" in printed
    wrong_route = perfect()
    wrong_route[0]["route"] = "orders"
    path = str(_write(tmp_path / "wr.jsonl", wrong_route))
    assert main([path, str(expected)]) == 0
    assert main([path, str(expected), "--fail-under", "0.9"]) == 1
    capsys.readouterr()
    assert main([path, str(expected), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["route"] == {"name": "route", "correct": 4, "total": 5}


def test_cli_reports_a_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _write(tmp_path / "expected.jsonl", EXPECTED)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(perfect()[0]) + "\n{not json\n")
    assert main([str(broken), str(expected)]) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err


# ------------------------------------------------------------------ golden set consistency
def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_golden_set_is_complete_and_consistent() -> None:
    fixtures = json.loads((GOLDEN / "fixtures.json").read_text())
    tickets, expected = _jsonl(GOLDEN / "tickets.jsonl"), _jsonl(GOLDEN / "expected.jsonl")
    assert len(tickets) >= 60
    assert [t["id"] for t in tickets] == [e["ticket_id"] for e in expected]
    customers = {c["id"] for c in fixtures["customers"]}
    articles = {a["id"] for a in fixtures["articles"]}
    assert all(t["tenant"] == fixtures["tenant"] and t["customer_id"] in customers for t in tickets)
    status_of = {"execute": "completed", "approve": "awaiting_approval", "escalate": "escalated", "deny": "escalated"}
    for e in expected:
        assert set(e) == {"ticket_id", "route", "status", "tool", "decision", "amount_cents", "reason_codes", "citations", "note"}
        if e["decision"] is not None:
            assert e["status"] == status_of[e["decision"]], e
            assert bool(e["reason_codes"]) == (e["decision"] in {"escalate", "deny"}), e
        if e["route"] == "knowledge":
            assert e["tool"] == "search_kb" and e["decision"] is None
            assert set(e["citations"]) <= articles
            assert (e["status"], e["reason_codes"]) in [("completed", []), ("escalated", ["no_answer_found"])]
        if e["tool"] is None:
            assert e["status"] == "escalated" and e["reason_codes"]
    codes = {c for e in expected for c in e["reason_codes"]}
    assert codes >= {
        "not_owner", "outside_refund_window", "amount_exceeds_refundable", "amount_over_agent_limit",
        "not_cancellable", "already_shipped", "identity_not_verified", "no_answer_found",
        "suspected_prompt_injection", "low_confidence", "multiple_intents",
    }
    assert sum("suspected_prompt_injection" in e["reason_codes"] for e in expected) >= 6
    assert {e["decision"] for e in expected} >= {"execute", "approve", "escalate", "deny"}
