"""The ``keel`` command as users and outside checks drive it (subprocesses, embedded store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.review_helpers import keel_cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
NOW = "2026-11-25T12:00:00Z"


def keel(*args, env=None, cwd=None, check=False):
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    e.update(env or {})
    out = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=e,
                         cwd=cwd or ROOT, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_matches_demo_expectations(tmp_path):
    out = keel("run", "--fixtures", str(DEMO / "fixtures.json"), "--tickets", str(DEMO / "tickets.jsonl"),
               "--now", NOW, check=True)
    got = rows(out.stdout)  # standard output holds JSON only
    assert [r["ticket_id"] for r in got] == [f"T-{i}" for i in range(1, 31)]
    for r in got:
        assert set(r) >= {"ticket_id", "thread_id", "route", "confidence", "status", "reason_codes", "actions",
                          "answer", "citations"}
    assert "[30/30]" in out.stderr
    from evals.score import score

    report = score(got, rows((DEMO / "expected.jsonl").read_text()))
    assert report.route_accuracy >= 0.9 and report.action_accuracy >= 0.9
    assert report.unauthorized_side_effects == 0


def test_run_writes_out_file(tmp_path):
    dest = tmp_path / "out.jsonl"
    keel("run", "--fixtures", str(DEMO / "fixtures.json"), "--tickets", str(DEMO / "tickets.jsonl"),
         "--now", NOW, "--out", str(dest), check=True)
    assert len(rows(dest.read_text())) == 30


def test_malformed_ticket_lines_are_reported_and_the_rest_run(tmp_path):
    lines = (DEMO / "tickets.jsonl").read_text().splitlines()[:3]
    bad = tmp_path / "t.jsonl"
    bad.write_text("\n".join([lines[0], "{not json", lines[1], json.dumps({"id": "X"}), lines[2]]) + "\n")
    out = keel("run", "--fixtures", str(DEMO / "fixtures.json"), "--tickets", str(bad), "--now", NOW)
    assert out.returncode != 0
    assert f"{bad}:2:" in out.stderr and f"{bad}:4:" in out.stderr
    assert [r["ticket_id"] for r in rows(out.stdout)] == ["T-1", "T-2", "T-3"]


def test_malformed_fixture_record_is_reported_with_its_line(tmp_path):
    raw = json.loads((DEMO / "fixtures.json").read_text())
    raw["orders"][1]["status"] = "lost-in-space"
    text = json.dumps(raw, indent=2)
    bad_line = next(i for i, line in enumerate(text.splitlines(), 1) if '"id": "O-5002"' in line)
    fx = tmp_path / "fx.json"
    fx.write_text(text)
    out = keel("run", "--fixtures", str(fx), "--tickets", str(DEMO / "tickets.jsonl"), "--now", NOW)
    assert out.returncode != 0
    assert any(f"{fx}:{n}:" in out.stderr for n in range(bad_line - 2, bad_line + 1)), out.stderr
    got = {r["ticket_id"]: r for r in rows(out.stdout)}
    assert len(got) == 30 and got["T-1"]["status"] == "completed"  # the rest still ran


def test_fixture_syntax_error_names_the_line_and_runs_nothing(tmp_path):
    fx = tmp_path / "fx.json"
    fx.write_text('{\n  "tenant": "acme",\n  "customers": [\n    {"id": "C-1",,}\n  ]\n}\n')
    out = keel("run", "--fixtures", str(fx), "--tickets", str(DEMO / "tickets.jsonl"), "--now", NOW)
    assert out.returncode == 2 and f"{fx}:4:" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["--now", "yesterday"], "--now"),
    (["--now", NOW, "--tickets-missing"], ""),
])
def test_bad_arguments_give_a_clear_error(args, needle):
    base = ["run", "--fixtures", str(DEMO / "fixtures.json"), "--tickets", str(DEMO / "tickets.jsonl")]
    out = keel(*base, *args)
    assert out.returncode == 2 and needle in out.stderr


def test_golden_set_scores(tmp_path):
    """The project's own golden set through ``keel run``: the issue's accuracy bars."""
    golden = ROOT / "evals" / "golden"
    out = keel("run", "--fixtures", str(golden / "fixtures.json"), "--tickets", str(golden / "tickets.jsonl"),
               "--now", NOW, check=True)
    from evals.score import score

    expected = rows((golden / "expected.jsonl").read_text())
    assert len(expected) >= 60
    report = score(rows(out.stdout), expected)
    assert report.route_accuracy >= 0.95, report
    assert report.action_accuracy >= 0.95, report
    assert report.unauthorized_side_effects == 0, report


def test_demo_then_approve_flow(tmp_path, monkeypatch, capsys):
    """The README's demo as a subprocess, then the reviewer's commands on its store: each in this
    process (what they print and exit with is the same; ten interpreter start-ups are not), the
    approval also once as a subprocess."""
    env = {"KEEL_DATA_DIR": str(tmp_path / "data")}
    demo = keel("demo", env=env, check=True)
    assert "awaiting approval" in demo.stdout and "keel approve" in demo.stdout

    def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
        code, out, err = keel_cli(list(args), monkeypatch, env, capsys)
        assert "Traceback" not in err, err[-3000:]
        if check:
            assert code == 0, err[-3000:]
        return subprocess.CompletedProcess(args, code, out, err)

    for k in [k for k in os.environ if k.startswith("KEEL_")]:
        monkeypatch.delenv(k)
    listing = cli("approvals", "--json", check=True)
    pending = json.loads(listing.stdout)
    assert sorted(p["ticket_id"] for p in pending) == ["T-14", "T-21", "T-23", "T-6", "T-8"]
    thread = next(p["thread_id"] for p in pending if p["ticket_id"] == "T-8")
    refused = cli("approve", thread, "--as", "demo-requester")
    assert refused.returncode == 2 and "not_an_approver" in refused.stderr
    unknown = cli("approve", thread, "--as", "nobody")
    assert unknown.returncode == 2 and "not known" in unknown.stderr
    up = cli("approve", thread, "--as", "demo-approver", "--edit", "0:amount_cents=99999")
    assert up.returncode == 2 and "edit_raises_amount" in up.stderr
    ok = keel("approve", thread, "--as", "demo-approver", env=env, check=True)
    assert json.loads(ok.stdout)["status"] == "completed"
    again = cli("approve", thread, "--as", "demo-approver")
    assert again.returncode == 2 and "no approval is pending" in again.stderr
    other = next(p["thread_id"] for p in pending if p["ticket_id"] == "T-6")
    rej = cli("reject", other, "--as", "demo-approver", "--reason", "policy", check=True)
    assert json.loads(rej.stdout)["status"] == "rejected"
    hist = cli("history", thread, check=True)
    assert "execute_action" in hist.stdout
    checkpoint = next(line.split()[0] for line in hist.stdout.splitlines() if "next=execute_action" in line)
    rep = cli("replay", thread, "--from", checkpoint, check=True)
    assert json.loads(rep.stdout)["status"] == "completed"
    assert len(json.loads(cli("approvals", "--json", check=True).stdout)) == 3
