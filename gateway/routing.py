"""Model routing as data: which models answer a task, in which order, under which limits.

A versioned TOML file (bundled: ``gateway/routing.toml``; ``KEEL_MODEL_ROUTING`` for your
own) maps a task (``route``, ``extract``, ``plan``, ``answer``), a risk tier, the tenant's
remaining daily tokens and the caller's latency target to an ordered chain of models. The
first rule that matches wins. Every model call records the model, the rule and the file's
version, so a decision can be traced to the routing that made it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from keel.types import StrictModel

__all__ = ["RoutingTable", "ModelSpec", "TaskLimits", "Rule", "RoutingTask", "RiskTier",
           "load_routing", "chain_routing", "DEFAULT_ROUTING_PATH", "GATEWAY_TASK", "Breaker"]

DEFAULT_ROUTING_PATH = Path(__file__).resolve().parent / "routing.toml"

RoutingTask = Literal["route", "extract", "plan", "answer"]
RiskTier = Literal["low", "high"]
StructuredOutput = Literal["json_schema", "function_calling", "json_mode"]

GATEWAY_TASK: dict[str, RoutingTask] = {"triage": "route", "extract": "extract", "plan": "plan", "answer": "answer"}
"""The gateway's task names → the routing file's (triage is routing a ticket)."""


class ModelSpec(StrictModel):
    """One model keel may call and how to talk to it."""

    provider: Literal["local", "openai"]
    model: str | None = None
    """Model name at the endpoint; None: ``KEEL_OPENAI_MODEL``."""
    base_url: str | None = None
    """Endpoint; None: ``KEEL_OPENAI_BASE_URL``."""
    structured_output: StructuredOutput = "json_schema"
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stream: bool = False
    cost_in_per_1k: float = Field(default=0.0, ge=0)
    cost_out_per_1k: float = Field(default=0.0, ge=0)
    temperature: float = Field(default=0.0, ge=0, le=2)
    """Sampling temperature sent to the model; only a model at 0 is ever cached (``Rule.cache_ttl_s``)."""

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """USD for this many tokens."""
        return round(tokens_in / 1000 * self.cost_in_per_1k + tokens_out / 1000 * self.cost_out_per_1k, 8)


class TaskLimits(StrictModel):
    """What one task may spend: answer tokens, time per attempt, retries, time in all."""

    max_tokens: int = Field(default=512, ge=16, le=32_768)
    timeout_s: float = Field(default=5.0, gt=0, le=600)
    retries: int = Field(default=0, ge=0, le=5)
    deadline_s: float = Field(default=8.0, gt=0, le=600)

    @model_validator(mode="after")
    def _fits(self) -> TaskLimits:
        if self.timeout_s > self.deadline_s:
            raise ValueError("timeout_s must not exceed deadline_s")
        return self


class Rule(StrictModel):
    """When it applies (every condition given must hold) and the chain it picks."""

    name: str = Field(min_length=1, max_length=64)
    tasks: list[RoutingTask] = Field(min_length=1)
    risk: RiskTier | Literal["any"] = "any"
    min_remaining_tokens: int | None = Field(default=None, ge=0)
    max_remaining_tokens: int | None = Field(default=None, ge=0)
    max_latency_ms: int | None = Field(default=None, ge=0)
    """Applies when the caller's latency target is at most this (a tight target)."""
    chain: list[str] = Field(min_length=1)
    cache_ttl_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    """Answers of this rule's models (at temperature 0) may be reused this long for an identical
    call of the same tenant (:mod:`gateway.cache`). Unset: never cached."""

    def matches(self, task: RoutingTask, risk: RiskTier, remaining: int | None, latency_ms: int | None) -> bool:
        """Does this rule apply? An unknown remaining budget or latency target matches no bound on it."""
        if task not in self.tasks or self.risk not in ("any", risk):
            return False
        if self.min_remaining_tokens is not None and (remaining is None or remaining < self.min_remaining_tokens):
            return False
        if self.max_remaining_tokens is not None and (remaining is None or remaining > self.max_remaining_tokens):
            return False
        if self.max_latency_ms is not None and (latency_ms is None or latency_ms > self.max_latency_ms):
            return False
        return True


class Breaker(StrictModel):
    """Circuit breaker thresholds (see :mod:`gateway.breaker`)."""

    failures: int = Field(default=3, ge=1, le=100)
    cooldown_s: float = Field(default=30.0, gt=0, le=3600)


class RoutingTable(StrictModel):
    """A routing file, validated: every chain names declared models; every task has limits and a rule."""

    version: str = Field(min_length=1, max_length=64)
    models: dict[str, ModelSpec]
    tasks: dict[RoutingTask, TaskLimits] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)
    breaker: Breaker = Field(default_factory=Breaker)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingTable:
        for rule in self.rules:
            unknown = [m for m in rule.chain if m not in self.models]
            if unknown:
                raise ValueError(f"rule {rule.name!r} names undeclared models {unknown}")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        return self

    def limits(self, task: RoutingTask) -> TaskLimits:
        """The task's limits (defaults when the file gives none)."""
        return self.tasks.get(task) or TaskLimits()

    def select(self, task: RoutingTask, *, risk: RiskTier = "low", remaining: int | None = None,
               latency_ms: int | None = None) -> Rule:
        """The first rule that applies; a file whose rules leave a case open falls back to keel's rules."""
        for rule in self.rules:
            if rule.matches(task, risk, remaining, latency_ms):
                return rule
        local = next((n for n, m in self.models.items() if m.provider == "local"), None)
        if local is None:
            raise ValueError(f"no routing rule for task {task!r} and no local model to fall back to")
        return Rule(name="no-rule-local", tasks=[task], chain=[local])

    def scaled_to(self, wall_clock_s: float, share: float = 0.8) -> RoutingTable:
        """This table with task deadlines (and timeouts) scaled so that one run's route,
        extract and plan fit in ``share`` of the run's wall-clock cap: a failing chain must
        end in the local fallback before the run's own cap escalates it."""
        tasks = {t: self.limits(t) for t in ("route", "extract", "plan", "answer")}
        total = sum(tasks[t].deadline_s for t in ("route", "extract", "plan"))
        factor = min(1.0, wall_clock_s * share / total) if total else 1.0
        if factor >= 1.0:
            return self
        scaled = {t: lim.model_copy(update={"deadline_s": lim.deadline_s * factor,
                                            "timeout_s": lim.timeout_s * factor}) for t, lim in tasks.items()}
        return self.model_copy(update={"tasks": scaled})


def load_routing(path: str | Path | None = None) -> RoutingTable:
    """Read and validate a routing file (the bundled one by default)."""
    path = Path(path) if path is not None else DEFAULT_ROUTING_PATH
    with open(path, "rb") as f:
        return RoutingTable.model_validate(tomllib.load(f))


def chain_routing(names: list[str], version: str = "settings") -> RoutingTable:
    """A one-rule table that tries ``names`` in order for every task: what
    ``KEEL_MODEL_PROVIDER`` + ``KEEL_MODEL_FALLBACKS`` describe when no routing file is set."""
    models = {n: ModelSpec(provider="local" if n == "local" else "openai",
                           structured_output="function_calling") for n in names}
    return RoutingTable(version=version, models=models,
                        rules=[Rule(name="configured-order", tasks=["route", "extract", "plan", "answer"], chain=names)])
