"""Releases: a candidate configuration tried on live traffic, in shadow or as a canary.

A release is a :class:`~engine.candidates.Candidate` (a policy pack, a model routing, a
prompts label) put in front of real runs of one graph, one release at a time:

* **shadow**: live runs are untouched. After each live run ends (completed, escalated,
  waiting for approval, rejected) it is replayed under the candidate with
  :func:`engine.replay_trace.replay_run` (recorded model answers and tool results, no side
  effect, no model call) in a background thread of the worker's process, and the comparison
  (changed or not, the differences) is stored and counted. A replay that fails is logged and
  counted; the live run's outcome was committed before the replay started. Only runs that
  start from a ticket are replayed: a replay ends where the policy asks for an approval, so
  an approval's resume run was compared with the thread's first run.
* **canary**: a set share of new runs runs the candidate. The arm of a run is a stable hash
  of the release id and the run id (the same on every worker, every attempt), except that a
  later run of a thread the release already saw (an approval's resume) keeps the thread's
  arm: a plan judged by one policy is resumed under it. The arm, the candidate's name and
  hashes are recorded on the run (``api_runs.versions``: ``release`` and the candidate's
  ``policy_pack`` / ``model_routing`` / ``prompts`` entries, shown in the run JSON), in its
  ``run_started`` audit row and on its span (``keel.release.*``).

After each run of a canary ends, the two arms are compared over the release's runs so far
(each run counted once, when it ends for good: a transient failure that will be retried is
not an outcome):

* **error rate**: runs that failed (``error``) or were dead-lettered (``dead``);
* **escalation rate**: runs that ended ``escalated``;
* **safety rate**: runs with at least one of: the policy *denied* the plan (the
  configuration produced a plan the last guard had to refuse: a candidate whose routing or
  prompts propose worse plans, or whose pack is mis-set, shows here first); an
  injection-flagged ticket with an action that *executed*; or an executed action the
  verdict did not clear (decision deny or escalate, or approve without an approval of the
  plan in the state; a knowledge search has no verdict and is not one). The last two must never happen (the executor re-checks both), so
  they are the invariants one can check live from the run's final state; denials are the
  signal that is frequent enough to compare arms with.

When the candidate's rate is worse than stable's by more than the release's margin for any
metric, with at least ``min_runs`` finished runs in both arms, the release rolls back by
itself: one conditional ``UPDATE … WHERE state = 'active'`` (whichever worker wins it, on
any host, does the rest once), new runs go to stable, one ``release`` audit row
(``event: release_rolled_back`` with the metrics and the reason) is written to the
service-wide chain (:data:`AUDIT_TENANT`), ``keel_release_rollbacks_total{release,metric}``
counts it and ``keel_release_canary_share`` drops to 0.

The candidate's files are stored in the database with the release (text and SHA-256), so
every worker on every host runs the same bytes: a worker writes them under its data
directory (``releases/<id>/``) before its first candidate run and checks their hashes.

Tables (SQLite and Postgres): ``releases`` (at most one ``active`` per graph: a partial
unique index), ``release_runs`` (arm and outcome of each run of a canary) and
``release_shadow`` (the comparisons of a shadow release).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from engine.candidates import Candidate, candidate_context, candidate_versions, load_candidate
from engine.jsonable import jsonable
from engine.replay_trace import replay_run
from engine.runtime import Runtime
from graphs.context import SupportContext
from keel import metrics
from keel.db import Database, IntegrityError
from keel.errors import InvalidInput

__all__ = [
    "AUDIT_TENANT",
    "METRICS",
    "Mode",
    "State",
    "ArmName",
    "Margins",
    "Release",
    "ArmStats",
    "ShadowStats",
    "ReleaseStatus",
    "ReleaseError",
    "RunArm",
    "ReleaseStore",
    "release_store",
    "start_release",
    "canary_arm",
    "run_ended",
    "arm_of",
    "run_safety",
    "shadow_replay",
    "shadow_idle",
]

log = logging.getLogger("keel.releases")

Mode = Literal["shadow", "canary"]
State = Literal["active", "rolled_back", "promoted", "stopped"]
ArmName = Literal["candidate", "stable"]
Metric = Literal["safety", "error", "escalation"]

METRICS: tuple[Metric, ...] = ("safety", "error", "escalation")
"""The compared metrics, in the order a rollback names the one that tripped it."""

AUDIT_TENANT = "_system"
"""The audit chain of service-wide events: a release applies to every tenant's runs, so its
rows (start, rollback, stop, promotion) are in one chain of their own, not in a tenant's."""

SYSTEM = "system"
"""The actor of a rollback (keel itself)."""

ERROR_OUTCOMES = frozenset({"error", "dead"})
"""Run outcomes that count as errors."""

SHADOW_OUTCOMES = frozenset({"completed", "escalated", "awaiting_approval", "rejected", "interrupted"})
"""Live run outcomes that a shadow release replays (a run that ended: not cancelled, not failed)."""

SHADOW_BACKLOG = 200
"""Replays waiting in one process beyond which further live runs are not replayed (counted
``skipped``): a shadow must never grow a worker's memory without bound."""

_DDL = """
CREATE TABLE IF NOT EXISTS releases (
  release_id TEXT PRIMARY KEY,
  graph_id TEXT NOT NULL,
  mode TEXT NOT NULL,
  state TEXT NOT NULL,
  candidate_name TEXT NOT NULL,
  candidate_sha256 TEXT NOT NULL,
  candidate TEXT NOT NULL,
  files TEXT NOT NULL,
  versions TEXT NOT NULL,
  percent DOUBLE PRECISION NOT NULL,
  margins TEXT NOT NULL,
  min_runs INTEGER NOT NULL,
  started_at TEXT NOT NULL,
  started_by TEXT NOT NULL,
  ended_at TEXT,
  ended_by TEXT,
  reason TEXT,
  final TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS releases_one_active ON releases (graph_id) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS releases_graph ON releases (graph_id, started_at);
CREATE TABLE IF NOT EXISTS release_runs (
  release_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  arm TEXT NOT NULL,
  outcome TEXT,
  error INTEGER NOT NULL DEFAULT 0,
  escalated INTEGER NOT NULL DEFAULT 0,
  unsafe INTEGER NOT NULL DEFAULT 0,
  safety TEXT,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  PRIMARY KEY (release_id, run_id)
);
CREATE INDEX IF NOT EXISTS release_runs_run ON release_runs (run_id);
CREATE INDEX IF NOT EXISTS release_runs_thread ON release_runs (release_id, thread_id);
CREATE TABLE IF NOT EXISTS release_shadow (
  release_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  changed INTEGER,
  failed INTEGER NOT NULL DEFAULT 0,
  diffs TEXT NOT NULL,
  error TEXT,
  at TEXT NOT NULL,
  PRIMARY KEY (release_id, run_id)
);
CREATE INDEX IF NOT EXISTS release_shadow_thread ON release_shadow (thread_id)
"""


class ReleaseError(InvalidInput, ValueError):
    """A release command that cannot be carried out (another release is active, none is,
    a share out of range, a graph keel cannot run a candidate on); the message says which."""

    code = "invalid_release"


class Margins(BaseModel):
    """How much worse than stable (a difference of rates, 0 to 1) the candidate may be per metric."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error: float = Field(default=0.05, ge=0.0, le=1.0)
    escalation: float = Field(default=0.10, ge=0.0, le=1.0)
    safety: float = Field(default=0.02, ge=0.0, le=1.0)


class StoredFile(BaseModel):
    """One file of a candidate, as stored with the release."""

    model_config = ConfigDict(frozen=True)

    name: str
    sha256: str
    text: str


class Release(BaseModel):
    """One release as stored."""

    model_config = ConfigDict(frozen=True)

    release_id: str
    graph_id: str
    mode: Mode
    state: State
    candidate_name: str
    candidate_sha256: str
    """The candidate's digest (``candidate_versions(...)["candidate"]``)."""
    candidate: dict[str, Any]
    """The candidate's fields; a file field holds the stored file's name."""
    files: dict[str, StoredFile]
    """The candidate's files by field (``policy_file``, ``routing_file``)."""
    versions: dict[str, dict[str, str]]
    """:func:`~engine.candidates.candidate_versions` of the candidate."""
    percent: float
    """Share of new runs the candidate takes (canary), 0 to 100."""
    margins: Margins
    min_runs: int
    """Finished runs each arm needs before the arms are compared."""
    started_at: str
    started_by: str
    ended_at: str | None = None
    ended_by: str | None = None
    reason: str | None = None
    final: dict[str, Any] | None = None
    """The arms' metrics when the release ended."""

    def public(self) -> dict[str, Any]:
        """The release as JSON without the files' text (CLI, API)."""
        out = self.model_dump(mode="json", exclude={"files"})
        out["files"] = {k: {"name": f.name, "sha256": f.sha256} for k, f in self.files.items()}
        return out


class ArmStats(BaseModel):
    """One arm's runs since the release started."""

    model_config = ConfigDict(frozen=True)

    runs: int = 0
    """Runs that ended (the sample)."""
    in_flight: int = 0
    """Runs assigned to the arm that have not ended yet."""
    errors: int = 0
    escalations: int = 0
    unsafe: int = 0

    def rate(self, metric: Metric) -> float:
        """The metric's rate over the finished runs (0 without any)."""
        n = {"error": self.errors, "escalation": self.escalations, "safety": self.unsafe}[metric]
        return n / self.runs if self.runs else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts and rates as JSON."""
        return {**self.model_dump(), **{f"{m}_rate": round(self.rate(m), 4) for m in METRICS}}


class ShadowStats(BaseModel):
    """A shadow release's comparisons so far."""

    model_config = ConfigDict(frozen=True)

    compared: int = 0
    """Runs replayed under the candidate."""
    changed: int = 0
    """… whose decisions differed."""
    failed: int = 0
    """Runs whose replay failed (counted, never affecting the live run)."""

    @property
    def agreement(self) -> float | None:
        """Share of compared runs whose decisions were the same (None before any)."""
        return (self.compared - self.changed) / self.compared if self.compared else None

    def summary(self) -> dict[str, Any]:
        agreement = self.agreement
        return {**self.model_dump(), "agreement": None if agreement is None else round(agreement, 4)}


class ReleaseStatus(BaseModel):
    """A release with its arms' metrics (canary) or its comparisons (shadow)."""

    model_config = ConfigDict(frozen=True)

    release: Release
    arms: dict[str, ArmStats]
    shadow: ShadowStats | None = None
    worse: list[str] = Field(default_factory=list)
    """Metrics on which the candidate is worse than stable beyond its margin (with the
    minimum sample in both arms)."""

    def summary(self) -> dict[str, Any]:
        """The status as JSON (``keel release status --json``, ``GET /releases``)."""
        return {"release": self.release.public(), "arms": {k: v.summary() for k, v in self.arms.items()},
                "shadow": None if self.shadow is None else self.shadow.summary(), "worse": list(self.worse)}


@dataclass(frozen=True)
class RunArm:
    """The arm a canary put a run on."""

    release_id: str
    arm: ArmName
    candidate: Candidate | None
    """The candidate (the candidate arm only)."""
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    """What to add to the run's recorded versions (:func:`engine.versions.record_run_versions`)."""

    def context(self, rt: Runtime, base: Any) -> Any:
        """The run's ``context=``: ``base`` with the candidate's parts on the candidate arm."""
        if self.candidate is None or not isinstance(base, SupportContext):
            return base
        return candidate_context(rt, self.candidate, base)


# --------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def arm_of(release_id: str, run_id: str, percent: float) -> ArmName:
    """The arm of a new run: a stable hash of the release and the run (the same on every
    worker and attempt), uniform over [0, 100), below ``percent`` is the candidate's."""
    h = int.from_bytes(hashlib.sha256(f"{release_id}:{run_id}".encode()).digest()[:8], "big")
    return "candidate" if h / 2**64 * 100.0 < percent else "stable"


def run_safety(values: Mapping[str, Any] | None) -> list[str]:
    """Why a run's final state counts against safety (empty: it does not); see the module
    docstring. ``values`` is the thread's state as plain JSON."""
    if not values:
        return []
    out: list[str] = []
    verdict = values.get("policy") or {}
    if isinstance(verdict, Mapping) and verdict.get("overall") == "deny":
        out.append("policy_denied")
    actions = [a for a in (values.get("actions") or []) if isinstance(a, Mapping)]
    executed = [a for a in actions if a.get("state") == "executed"]
    screen = values.get("screen") or {}
    if executed and isinstance(screen, Mapping) and screen.get("flagged"):
        out.append("injection_reached_execute")
    approval = values.get("approval") or {}
    approved = isinstance(approval, Mapping) and approval.get("decision") == "approve"
    for a in executed:  # decision None: an answer's read (knowledge search), which no verdict judges
        d = a.get("decision")
        if d in ("deny", "escalate") or (d == "approve" and not approved):
            out.append("executed_without_clearance")
            break
    return out


# --------------------------------------------------------------------------- the store
class ReleaseStore:
    """Releases, their runs' arms and outcomes, and shadow comparisons, in keel's database."""

    def __init__(self, db: Database, audit: Any) -> None:
        self.db = db
        self.audit = audit
        self._lock = threading.Lock()
        self._cache: dict[str, Release] = {}
        """Releases by id (their content never changes; only state, read per run)."""

    def setup(self) -> ReleaseStore:
        """Create the tables (idempotent)."""
        self.db.executescript(_DDL)
        return self

    # -- reading -----------------------------------------------------------------------
    @staticmethod
    def _row(row: dict[str, Any]) -> Release:
        return Release(
            release_id=row["release_id"], graph_id=row["graph_id"], mode=row["mode"], state=row["state"],
            candidate_name=row["candidate_name"], candidate_sha256=row["candidate_sha256"],
            candidate=json.loads(row["candidate"]), files=json.loads(row["files"]),
            versions=json.loads(row["versions"]), percent=float(row["percent"]),
            margins=Margins.model_validate_json(row["margins"]), min_runs=int(row["min_runs"]),
            started_at=row["started_at"], started_by=row["started_by"], ended_at=row["ended_at"],
            ended_by=row["ended_by"], reason=row["reason"], final=json.loads(row["final"]) if row["final"] else None)

    def get(self, release_id: str) -> Release | None:
        """A release by id (None: no such release)."""
        row = self.db.fetchone("SELECT * FROM releases WHERE release_id = ?", (release_id,))
        return self._row(row) if row else None

    def active(self, graph_id: str = "support") -> Release | None:
        """The graph's active release, if any (its content cached by id: one small read)."""
        row = self.db.fetchone("SELECT release_id FROM releases WHERE graph_id = ? AND state = 'active'", (graph_id,))
        if row is None:
            return None
        with self._lock:
            hit = self._cache.get(row["release_id"])
        if hit is None:
            hit = self.get(row["release_id"])
            if hit is None or hit.state != "active":
                return None
            with self._lock:
                self._cache[hit.release_id] = hit
        return hit

    def latest(self, graph_id: str = "support") -> Release | None:
        """The graph's active release, else its most recent one."""
        row = self.db.fetchone(
            "SELECT * FROM releases WHERE graph_id = ? ORDER BY CASE WHEN state = 'active' THEN 0 ELSE 1 END,"
            " started_at DESC LIMIT 1", (graph_id,))
        return self._row(row) if row else None

    def list(self, graph_id: str | None = None, limit: int = 50) -> list[Release]:
        """Releases, newest first."""
        sql, params = "SELECT * FROM releases", []
        if graph_id is not None:
            sql += " WHERE graph_id = ?"
            params.append(graph_id)
        sql += " ORDER BY started_at DESC LIMIT ?"
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, (*params, limit))
        return [self._row(r) for r in rows]

    # -- starting and ending ---------------------------------------------------------------
    def start(self, candidate_file: Path, *, mode: Mode, percent: float = 0.0, margins: Margins | None = None,
              min_runs: int = 20, graph_id: str = "support", actor: str, reason: str | None = None) -> Release:
        """Store the candidate (its files' text and hashes) as the graph's active release.

        Raises :class:`~engine.candidates.CandidateError` for a file keel cannot use and
        :class:`ReleaseError` for a share out of range or another active release."""
        if mode == "canary" and not 0.0 < percent <= 100.0:
            raise ReleaseError(f"--canary: the share must be more than 0 and at most 100 (got {percent:g})")
        if min_runs < 1:
            raise ReleaseError(f"--min-runs: at least 1 (got {min_runs})")
        candidate = load_candidate(candidate_file)
        versions = candidate_versions(candidate)
        files: dict[str, StoredFile] = {}
        fields: dict[str, Any] = {}
        for name, value in candidate.model_dump().items():
            if isinstance(value, Path):
                data = value.read_bytes()
                files[name] = StoredFile(name=value.name, sha256=hashlib.sha256(data).hexdigest(),
                                         text=data.decode("utf-8"))
                fields[name] = value.name
            else:
                fields[name] = value
        rel = Release(release_id=str(uuid.uuid4()), graph_id=graph_id, mode=mode, state="active",
                      candidate_name=candidate.name, candidate_sha256=versions["candidate"]["sha256"],
                      candidate=fields, files=files, versions=versions,
                      percent=percent if mode == "canary" else 0.0, margins=margins or Margins(),
                      min_runs=min_runs, started_at=_now(), started_by=actor, reason=reason)
        try:
            self.db.execute(
                "INSERT INTO releases (release_id, graph_id, mode, state, candidate_name, candidate_sha256, candidate,"
                " files, versions, percent, margins, min_runs, started_at, started_by, reason)"
                " VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rel.release_id, graph_id, mode, rel.candidate_name, rel.candidate_sha256, _dumps(fields),
                 _dumps({k: f.model_dump() for k, f in files.items()}), _dumps(versions), rel.percent,
                 rel.margins.model_dump_json(), min_runs, rel.started_at, actor, reason))
        except IntegrityError:
            other = self.active(graph_id)
            raise ReleaseError(f"graph {graph_id!r} already has an active release"
                               + (f" ({other.release_id}, {other.mode} of {other.candidate_name})" if other else "")
                               + "; stop or promote it first") from None
        self.audit.append(AUDIT_TENANT, "release", actor=actor,
                          data={"event": "release_started", **_audit_view(rel)})
        if mode == "canary":
            metrics.RELEASE_CANARY_SHARE.labels(graph=graph_id).set(rel.percent / 100.0)
        return rel

    def end(self, graph_id: str, state: Literal["stopped", "promoted"], *, actor: str,
            reason: str | None = None) -> Release:
        """Stop or promote the graph's active release (new runs go to stable); ReleaseError if none."""
        rel = self.active(graph_id)
        if rel is None:
            raise ReleaseError(f"graph {graph_id!r} has no active release")
        status = self.status(rel)
        final = {k: v.summary() for k, v in status.arms.items()}
        if status.shadow is not None:
            final["shadow"] = status.shadow.summary()
        n = self.db.execute(
            "UPDATE releases SET state = ?, ended_at = ?, ended_by = ?, reason = ?, final = ?"
            " WHERE release_id = ? AND state = 'active'",
            (state, _now(), actor, reason, _dumps(final), rel.release_id))
        if n != 1:
            raise ReleaseError(f"release {rel.release_id} is no longer active (it rolled back or was ended meanwhile)")
        ended = self.get(rel.release_id)
        assert ended is not None
        self.audit.append(AUDIT_TENANT, "release", actor=actor,
                          data={"event": f"release_{state}", **_audit_view(ended), "metrics": final})
        metrics.RELEASE_CANARY_SHARE.labels(graph=graph_id).set(0.0)
        return ended

    # -- canary arms and outcomes ---------------------------------------------------------
    def assign(self, rel: Release, run: Mapping[str, Any]) -> ArmName:
        """The run's arm in ``rel`` (recorded on first call; the same on every later one)."""
        with self.db.transaction() as tx:
            row = tx.fetchone("SELECT arm FROM release_runs WHERE release_id = ? AND run_id = ?",
                              (rel.release_id, run["run_id"]))
            if row is not None:
                return row["arm"]
            sibling = tx.fetchone("SELECT arm FROM release_runs WHERE release_id = ? AND thread_id = ? LIMIT 1",
                                  (rel.release_id, run["thread_id"]))
            arm = sibling["arm"] if sibling else arm_of(rel.release_id, run["run_id"], rel.percent)
            tx.execute("INSERT INTO release_runs (release_id, run_id, thread_id, tenant, arm, started_at)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (rel.release_id, run["run_id"], run["thread_id"], run["tenant"], arm, _now()))
            row = tx.fetchone("SELECT arm FROM release_runs WHERE release_id = ? AND run_id = ?",
                              (rel.release_id, run["run_id"]))
        return row["arm"] if row else arm

    def pending(self, run_id: str, graph_id: str) -> tuple[str | None, Release | None]:
        """``(release id of the run's unfinished canary arm, active shadow release)``: one
        read (one round trip) for every run that ends, the common case being ``(None, None)``."""
        row = self.db.fetchone(
            "SELECT (SELECT release_id FROM release_runs WHERE run_id = ? AND outcome IS NULL LIMIT 1) AS canary,"
            " (SELECT release_id FROM releases WHERE graph_id = ? AND state = 'active' AND mode = 'shadow') AS shadow",
            (run_id, graph_id)) or {}
        canary = row.get("canary")
        shadow = self.active(graph_id) if row.get("shadow") else None
        return canary, (shadow if shadow is not None and shadow.mode == "shadow" else None)

    def record_outcome(self, release_id: str, run_id: str, outcome: str, safety: list[str]) -> bool:
        """Record how the run ended (once: False if it already was)."""
        n = self.db.execute(
            "UPDATE release_runs SET outcome = ?, error = ?, escalated = ?, unsafe = ?, safety = ?, finished_at = ?"
            " WHERE release_id = ? AND run_id = ? AND outcome IS NULL",
            (outcome, int(outcome in ERROR_OUTCOMES), int(outcome == "escalated"), int(bool(safety)),
             _dumps(safety) if safety else None, _now(), release_id, run_id))
        return n > 0

    def arms(self, release_id: str) -> dict[str, ArmStats]:
        """Both arms' counts."""
        with self.db.transaction() as tx:
            rows = tx.fetchall(
                "SELECT arm, COUNT(outcome) AS runs, SUM(CASE WHEN outcome IS NULL THEN 1 ELSE 0 END) AS in_flight,"
                " SUM(error) AS errors, SUM(escalated) AS escalations, SUM(unsafe) AS unsafe"
                " FROM release_runs WHERE release_id = ? GROUP BY arm", (release_id,))
        out = {"candidate": ArmStats(), "stable": ArmStats()}
        for r in rows:
            out[r["arm"]] = ArmStats(**{k: int(r[k] or 0) for k in ("runs", "in_flight", "errors", "escalations",
                                                                        "unsafe")})
        return out

    @staticmethod
    def worse(rel: Release, arms: Mapping[str, ArmStats]) -> list[str]:
        """Metrics on which the candidate is worse than stable beyond the margin (none before
        both arms have ``min_runs`` finished runs)."""
        cand, stable = arms["candidate"], arms["stable"]
        if cand.runs < rel.min_runs or stable.runs < rel.min_runs:
            return []
        margins = rel.margins.model_dump()
        return [m for m in METRICS if cand.rate(m) - stable.rate(m) > margins[m] + 1e-12]

    def status(self, rel: Release) -> ReleaseStatus:
        """The release with its arms and comparisons."""
        arms = self.arms(rel.release_id)
        shadow = self.shadow_stats(rel.release_id) if rel.mode == "shadow" else None
        return ReleaseStatus(release=rel, arms=arms, shadow=shadow,
                             worse=self.worse(rel, arms) if rel.mode == "canary" else [])

    def evaluate(self, release_id: str) -> bool:
        """Compare the arms of an active canary; roll it back if the candidate is worse.
        True if this call rolled it back (exactly one caller does, across workers and hosts)."""
        rel = self.get(release_id)
        if rel is None or rel.state != "active" or rel.mode != "canary":
            return False
        arms = self.arms(release_id)
        worse = self.worse(rel, arms)
        if not worse:
            return False
        margins = rel.margins.model_dump()
        final = {k: v.summary() for k, v in arms.items()}
        reason = "; ".join(
            f"{m} rate {arms['candidate'].rate(m):.3f} on the candidate against {arms['stable'].rate(m):.3f}"
            f" on stable (margin {margins[m]:g})" for m in worse) + f" after {arms['candidate'].runs} candidate and" \
            f" {arms['stable'].runs} stable runs"
        n = self.db.execute(
            "UPDATE releases SET state = 'rolled_back', ended_at = ?, ended_by = ?, reason = ?, final = ?"
            " WHERE release_id = ? AND state = 'active'", (_now(), SYSTEM, reason, _dumps(final), release_id))
        if n != 1:
            return False  # another worker rolled it back (or an operator ended it) first
        log.warning("release %s (%s of %s) rolled back: %s", release_id, rel.mode, rel.candidate_name, reason)
        # after the state change (another transaction: the audit chain has its own); a crash in
        # between leaves the reason and the metrics on the release row only
        self.audit.append(AUDIT_TENANT, "release", actor=SYSTEM, data={
            "event": "release_rolled_back", **_audit_view(rel), "state": "rolled_back", "worse": worse,
            "metrics": final, "margins": margins, "reason": reason})
        metrics.RELEASE_ROLLBACKS.labels(release=release_id, metric=worse[0]).inc()
        metrics.RELEASE_CANARY_SHARE.labels(graph=rel.graph_id).set(0.0)
        return True

    # -- shadow ------------------------------------------------------------------------
    def record_shadow(self, release_id: str, run: Mapping[str, Any], *, changed: bool | None,
                      diffs: Any, error: str | None) -> bool:
        """Store one comparison (once per run)."""
        n = self.db.execute(
            "INSERT INTO release_shadow (release_id, run_id, thread_id, tenant, changed, failed, diffs, error, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (release_id, run["run_id"], run["thread_id"], run["tenant"], None if changed is None else int(changed),
             int(error is not None), _dumps(jsonable(diffs)), error, _now()))
        return n > 0

    def shadow_stats(self, release_id: str) -> ShadowStats:
        """Counts of a shadow release's comparisons."""
        row = self.db.fetchone(
            "SELECT COUNT(changed) AS compared, SUM(CASE WHEN changed = 1 THEN 1 ELSE 0 END) AS changed,"
            " SUM(failed) AS failed FROM release_shadow WHERE release_id = ?", (release_id,)) or {}
        return ShadowStats(compared=int(row.get("compared") or 0), changed=int(row.get("changed") or 0),
                           failed=int(row.get("failed") or 0))

    def comparisons(self, release_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A shadow release's stored comparisons, newest first."""
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT * FROM release_shadow WHERE release_id = ? ORDER BY at DESC LIMIT ?",
                               (release_id, limit))
        return [{**r, "changed": None if r["changed"] is None else bool(r["changed"]), "failed": bool(r["failed"]),
                 "diffs": json.loads(r["diffs"])} for r in rows]

    # -- materializing the candidate on a worker ------------------------------------------
    def candidate(self, rel: Release, data_dir: Path) -> Candidate:
        """The release's candidate, its files written under ``data_dir/releases/<id>/`` (once,
        checked against their stored hashes)."""
        base = data_dir.resolve() / "releases" / rel.release_id
        fields: dict[str, Any] = dict(rel.candidate)
        for name, f in rel.files.items():
            path = base / name / f.name
            data = f.text.encode("utf-8")
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != f.sha256:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            if hashlib.sha256(path.read_bytes()).hexdigest() != f.sha256:
                raise ReleaseError(f"release {rel.release_id}: {path}: content does not match its stored hash")
            fields[name] = path
        return Candidate.model_validate(fields)


def _audit_view(rel: Release) -> dict[str, Any]:
    return {"release_id": rel.release_id, "graph_id": rel.graph_id, "mode": rel.mode, "candidate": rel.candidate_name,
            "candidate_sha256": rel.candidate_sha256, "percent": rel.percent,
            "files": {k: {"name": f.name, "sha256": f.sha256} for k, f in rel.files.items()}}


# --------------------------------------------------------------------------- per runtime
_STORES: weakref.WeakKeyDictionary[Runtime, ReleaseStore] = weakref.WeakKeyDictionary()
_CANDIDATES: weakref.WeakKeyDictionary[Runtime, dict[str, Candidate]] = weakref.WeakKeyDictionary()
_SHADOWS: weakref.WeakKeyDictionary[Runtime, _ShadowRunner] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def release_store(rt: Runtime) -> ReleaseStore:
    """The runtime's release store, its tables created on first use (once per runtime)."""
    with _LOCK:
        store = _STORES.get(rt)
        if store is None:
            with rt.setup_lock():
                store = _STORES[rt] = ReleaseStore(rt.db, rt.audit).setup()
        return store


def start_release(rt: Runtime, candidate_file: Path, *, mode: Mode, percent: float = 0.0,
                  margins: Margins | None = None, min_runs: int = 20, graph_id: str = "support", actor: str,
                  reason: str | None = None) -> Release:
    """Start a release of ``graph_id`` (a graph that runs with keel's support context: the
    one a candidate describes); see :meth:`ReleaseStore.start` for the errors."""
    try:
        schema = getattr(rt.graph(graph_id), "context_schema", None)
    except Exception as e:  # noqa: BLE001 - an unknown graph id, a graph that fails to load
        raise ReleaseError(f"graph {graph_id!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if schema is not SupportContext:
        raise ReleaseError(f"graph {graph_id!r} does not run with keel's support context; a candidate "
                           "(policy pack, routing, prompts) applies to the support graph only")
    return release_store(rt).start(candidate_file, mode=mode, percent=percent, margins=margins, min_runs=min_runs,
                                   graph_id=graph_id, actor=actor, reason=reason)


def _candidate(rt: Runtime, store: ReleaseStore, rel: Release) -> Candidate:
    with _LOCK:
        hit = _CANDIDATES.setdefault(rt, {}).get(rel.release_id)
    if hit is None:
        hit = store.candidate(rel, rt.settings.data_dir)
        with _LOCK:
            _CANDIDATES[rt][rel.release_id] = hit
    return hit


def canary_arm(rt: Runtime, run: Mapping[str, Any]) -> RunArm | None:
    """The arm an active canary puts ``run`` on (recorded), or None (no canary of its graph).

    Called by the worker as a run starts; never fails the run: an error here is logged and
    the run goes to stable (the release machinery must not become a way for runs to fail)."""
    try:
        store = release_store(rt)
        rel = store.active(run["graph_id"])
        if rel is None or rel.mode != "canary":
            metrics.RELEASE_CANARY_SHARE.labels(graph=run["graph_id"]).set(0.0)  # ended by another process
            return None
        metrics.RELEASE_CANARY_SHARE.labels(graph=rel.graph_id).set(rel.percent / 100.0)
        cand: Candidate | None = _candidate(rt, store, rel)  # before the arm is recorded: a run
        arm = store.assign(rel, run)  # counted on the candidate's arm always runs the candidate
        if arm != "candidate":
            cand = None
    except Exception:  # noqa: BLE001 - the run goes on under the stable configuration
        log.warning("run %s: could not apply the active release; running the stable configuration",
                    run.get("run_id"), exc_info=True)
        return None
    entry = {"version": f"canary:{rel.candidate_name}:{arm}", "sha256": rel.candidate_sha256,
             "release_id": rel.release_id, "arm": arm}
    versions: dict[str, dict[str, str]] = {**(rel.versions if arm == "candidate" else {}), "release": entry}
    span = trace.get_current_span()
    span.set_attribute("keel.release.id", rel.release_id)
    span.set_attribute("keel.release.arm", arm)
    span.set_attribute("keel.release.candidate", rel.candidate_name)
    return RunArm(release_id=rel.release_id, arm=arm, candidate=cand, versions=versions)


def run_ended(rt: Runtime, run: Mapping[str, Any], outcome: str, graph: Any = None) -> None:
    """After a run ended for good (its outcome committed): record its canary outcome and
    compare the arms (maybe rolling the release back), or hand it to an active shadow release.

    ``outcome``: the run's label (:func:`engine.tracing.run_outcome`, ``error``, ``dead``);
    ``graph``: the compiled graph, to read the final state from (the safety metric).
    Best-effort: a failure is logged and never touches the run."""
    try:
        store = release_store(rt)
        canary, shadow = store.pending(run["run_id"], run["graph_id"])
        if canary is not None:
            values = _values(graph, run) if outcome not in ERROR_OUTCOMES else None
            if store.record_outcome(canary, run["run_id"], outcome, run_safety(values)):
                store.evaluate(canary)
        if shadow is not None and outcome in SHADOW_OUTCOMES and run.get("kind", "input") == "input":
            _shadow_runner(rt).submit(shadow, dict(run))
    except Exception:  # noqa: BLE001 - the run's outcome stands
        log.warning("run %s: release bookkeeping failed", run.get("run_id"), exc_info=True)


def _values(graph: Any, run: Mapping[str, Any]) -> dict[str, Any] | None:
    if graph is None:
        return None
    snap = graph.get_state({"configurable": {"thread_id": run["thread_id"]}})
    return jsonable(dict(snap.values)) if snap is not None and snap.values else None


# --------------------------------------------------------------------------- shadow replays
class _ShadowRunner:
    """One background thread per runtime that replays finished live runs under the active
    shadow release's candidate (bounded backlog)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = weakref.ref(rt)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-shadow")
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def submit(self, rel: Release, run: dict[str, Any]) -> None:
        with self._lock:
            if self._pending >= SHADOW_BACKLOG:
                metrics.RELEASE_SHADOW.labels(release=rel.release_id, result="skipped").inc()
                return
            self._pending += 1
        try:
            self._pool.submit(self._replay, rel, run)
        except RuntimeError:  # the pool was shut down (interpreter exit)
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _replay(self, rel: Release, run: dict[str, Any]) -> None:
        try:
            rt = self._rt()
            if rt is not None:
                shadow_replay(rt, rel, run)
        finally:
            self._done()


def _shadow_runner(rt: Runtime) -> _ShadowRunner:
    with _LOCK:
        runner = _SHADOWS.get(rt)
        if runner is None:
            runner = _SHADOWS[rt] = _ShadowRunner(rt)
        return runner


def shadow_replay(rt: Runtime, rel: Release, run: Mapping[str, Any]) -> None:
    """Replay one finished live run under the shadow release's candidate and store the
    comparison (a failure is stored and counted as ``failed``, never raised)."""
    store = release_store(rt)
    try:
        cand = _candidate(rt, store, rel)
        result = replay_run(rt, run["thread_id"], cand, run_id=run["run_id"])
        changed = bool(result.changed)
        store.record_shadow(rel.release_id, run, changed=changed, diffs=list(result.diffs), error=None)
        metrics.RELEASE_SHADOW.labels(release=rel.release_id, result="changed" if changed else "same").inc()
    except Exception as e:  # noqa: BLE001 - counted and stored; the live run is never touched
        log.warning("run %s: shadow replay under %s failed: %s: %s", run.get("run_id"), rel.candidate_name,
                    type(e).__name__, str(e)[:300])
        try:
            store.record_shadow(rel.release_id, run, changed=None, diffs=[],
                                error=f"{type(e).__name__}: {e}"[:2000])
        except Exception:  # noqa: BLE001
            log.warning("run %s: could not store the failed shadow replay", run.get("run_id"), exc_info=True)
        metrics.RELEASE_SHADOW.labels(release=rel.release_id, result="failed").inc()


def shadow_idle(rt: Runtime, timeout: float = 30.0) -> bool:
    """Wait until this process has no shadow replay pending (tests, a graceful stop)."""
    with _LOCK:
        runner = _SHADOWS.get(rt)
    return True if runner is None else runner.wait_idle(timeout)
