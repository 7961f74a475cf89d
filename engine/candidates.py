"""Candidate configurations: a policy pack, a model routing or a prompts version to try
against the one in force, without deploying it.

Replaying recorded runs (:mod:`engine.replay_trace`), shadow runs and canaries all ask the
same question, "what would this run have decided under that configuration?", so they share
one description of "that configuration" (:class:`Candidate`, read from a small TOML file)
and one way to build a run's :class:`~graphs.context.SupportContext` from it
(:func:`candidate_context`). A candidate file::

    name = "stricter-refunds"
    policy = "support-strict.toml"     # relative to this file
    routing = "routing-v2.toml"        # optional
    prompts = "2026-11-b"              # optional label

A bare policy pack file is a candidate too: one whose only change is the policy.

``prompts`` is a label only: keel ships one set of system prompts (``gateway.prompts``)
and the gateway has no per-run prompt switch, so a candidate's prompts version is recorded
in :func:`candidate_versions` but changes nothing a run calls. In a replay it could not
matter anyway: every model answer comes from the recording.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from engine.runtime import Runtime
from engine.tracing import TracedJudge
from gateway.gateway import ModelGateway, gateway_from_settings
from gateway.routing import RoutingTable, load_routing
from graphs.context import SupportContext
from guards.budgets import RunCaps
from guards.pack import PolicyError, PolicyPack, load_policy
from guards.policy import PolicyEngine
from keel.errors import ConfigError
from keel.types import StrictModel
from tools.registry import TOOLS, cards

__all__ = [
    "Candidate",
    "CandidateError",
    "load_candidate",
    "candidate_policy",
    "candidate_routing",
    "candidate_context",
    "candidate_versions",
]

_CANDIDATE_KEYS = frozenset({"name", "policy", "routing", "prompts", "description"})
_PACK_KEYS = frozenset({"version", "router", "routes", "refund"})
"""Keys that only a policy pack has: a file with them is a bare pack candidate."""


class CandidateError(ConfigError, ValueError):
    """A candidate file keel cannot use; the message names the file and the problem."""

    code = "invalid_candidate"


class Candidate(StrictModel):
    """A configuration to try: each part it names replaces the one in force; None keeps it."""

    name: str = Field(min_length=1, max_length=64)
    policy_file: Path | None = None
    """A policy pack (TOML) to decide plans with."""
    routing_file: Path | None = None
    """A model routing file (TOML, ``gateway/routing.toml``'s format)."""
    prompts_version: str | None = Field(default=None, min_length=1, max_length=64)
    """A prompts label (recorded; see the module docstring)."""


def load_candidate(path: str | Path) -> Candidate:
    """Read a candidate file (or a bare policy pack file); raises :class:`CandidateError`
    naming the file, and validates every file it names (so a bad pack fails here, not mid-run)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CandidateError(f"{p}: cannot read candidate file: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CandidateError(f"{p}: not valid TOML: {e}") from None
    if _PACK_KEYS & data.keys():
        _load_pack(p)
        return Candidate(name=p.stem, policy_file=p.resolve())
    unknown = sorted(data.keys() - _CANDIDATE_KEYS)
    if unknown:
        raise CandidateError(f"{p}: unknown keys {unknown} (a candidate has name, policy, routing, prompts)")
    for key in ("policy", "routing", "prompts", "name"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            raise CandidateError(f"{p}: {key!r} must be a non-empty string")
    if not {"policy", "routing", "prompts"} & data.keys():
        raise CandidateError(f"{p}: a candidate names at least one of policy, routing, prompts")
    base = p.resolve().parent
    try:
        cand = Candidate(
            name=data.get("name") or p.stem,
            policy_file=(base / data["policy"]).resolve() if "policy" in data else None,
            routing_file=(base / data["routing"]).resolve() if "routing" in data else None,
            prompts_version=data.get("prompts"),
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise CandidateError(f"{p}: {problems}") from None
    try:
        candidate_policy(cand)
        candidate_routing(cand)
    except CandidateError as e:
        raise CandidateError(f"{p}: {e}") from None
    return cand


# ------------------------------------------------------------------ the parts, cached by content
_LOCK = threading.Lock()
_PACKS: dict[tuple[str, int, int], PolicyPack] = {}
_TABLES: dict[tuple[str, int, int], tuple[RoutingTable, str]] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise CandidateError(f"{path}: cannot read: {e.strerror or e}") from None
    return str(path), st.st_mtime_ns, st.st_size


def _load_pack(path: Path) -> PolicyPack:
    key = _stat_key(path)
    with _LOCK:
        hit = _PACKS.get(key)
    if hit is not None:
        return hit
    try:
        pack = load_policy(path, tools=TOOLS)
    except PolicyError as e:
        raise CandidateError(str(e)) from None
    with _LOCK:
        _PACKS[key] = pack
    return pack


def candidate_policy(candidate: Candidate) -> PolicyPack | None:
    """The candidate's policy pack, validated (None: it keeps the one in force)."""
    return None if candidate.policy_file is None else _load_pack(candidate.policy_file)


def candidate_routing(candidate: Candidate) -> RoutingTable | None:
    """The candidate's routing table, validated (None: it keeps the one in force)."""
    return None if candidate.routing_file is None else _load_routing(candidate.routing_file)[0]


def _load_routing(path: Path) -> tuple[RoutingTable, str]:
    key = _stat_key(path)
    with _LOCK:
        hit = _TABLES.get(key)
    if hit is not None:
        return hit
    try:
        raw = path.read_bytes()
        table = load_routing(path)
    except OSError as e:
        raise CandidateError(f"{path}: cannot read routing file: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, ValidationError, ValueError) as e:
        raise CandidateError(f"{path}: invalid routing file: {e}") from None
    out = (table, hashlib.sha256(raw).hexdigest())
    with _LOCK:
        _TABLES[key] = out
    return out


# ------------------------------------------------------------------ a run's context
def candidate_context(rt: Runtime, candidate: Candidate, base: SupportContext | None = None) -> SupportContext:
    """``base`` (default: the runtime's per-run context) with the parts the candidate names
    replaced: the policy pack, its engine and the run caps; the model gateway for a routing
    file. Everything else (stores, tools, clocks, keys) is ``base``'s, so a caller that
    swapped the gateway or the tools (a replay) keeps them unless the candidate routes models."""
    ctx = base if base is not None else rt.support_context()
    changes: dict[str, Any] = {}
    pack = candidate_policy(candidate)
    env = getattr(rt.settings, "env", None)
    if pack is not None and env and hasattr(pack, "for_env"):  # as KEEL_ENV applies it, like the pack in force
        pack = pack.for_env(env)
    if pack is not None:
        changes.update(policy=pack, policy_engine=TracedJudge(PolicyEngine(pack, cards())),
                       caps=RunCaps.from_pack(pack))
    if candidate.routing_file is not None:
        changes["gateway"] = _candidate_gateway(rt, candidate.routing_file, pack or ctx.policy)
    return dataclasses.replace(ctx, **changes) if changes else ctx


def _candidate_gateway(rt: Runtime, routing_file: Path, pack: PolicyPack) -> ModelGateway:
    _load_routing(routing_file)  # validated, with a CandidateError naming the file
    settings = rt.settings.model_copy(update={"model_routing": routing_file})
    return gateway_from_settings(settings, wall_clock_s=pack.budgets.wall_clock_s,
                                 remaining=lambda tenant: rt.tokens.remaining(tenant, rt.settings.clock()))


# ------------------------------------------------------------------ what it is, by content
def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


def candidate_versions(candidate: Candidate) -> dict[str, dict[str, str]]:
    """What the candidate changes, as :func:`engine.versions.run_versions` entries
    (``{"version": label, "sha256": digest}``): ``policy_pack``, ``model_routing``,
    ``prompts`` for the parts it names, and ``candidate`` (its name; the digest of all)."""
    out: dict[str, dict[str, str]] = {}
    pack = candidate_policy(candidate)
    if pack is not None:
        out["policy_pack"] = {"version": pack.version, "sha256": pack.sha256 or _digest(pack.model_dump(mode="json"))}
    if candidate.routing_file is not None:
        table, sha = _load_routing(candidate.routing_file)
        out["model_routing"] = {"version": table.version, "sha256": sha}
    if candidate.prompts_version is not None:
        out["prompts"] = {"version": candidate.prompts_version, "sha256": _digest(candidate.prompts_version)}
    out["candidate"] = {"version": candidate.name, "sha256": _digest({k: v["sha256"] for k, v in out.items()})}
    return out
