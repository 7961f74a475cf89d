"""keel's settings: the one place that reads the environment.

Every ``KEEL_*`` variable is a field of :class:`Settings`. Other modules take a
``Settings`` (or call :func:`get_settings`) instead of reading ``os.environ``, so a
test can build a ``Settings`` by hand and a reviewer can see every knob in one file.
"""

from __future__ import annotations

import functools
import secrets
from datetime import datetime, UTC
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keel.errors import ConfigError

__all__ = ["Settings", "get_settings", "ModelProvider", "PACKAGE_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parent
"""Where keel's bundled data (demo fixtures, policy packs) lives."""

ModelProvider = Literal["local", "openai"]
"""``local``: the deterministic offline provider. ``openai``: any OpenAI-compatible chat
model through langchain-openai's structured output."""


class Settings(BaseSettings):
    """Runtime configuration, read from ``KEEL_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore", frozen=True)

    database_url: str | None = None
    """``postgresql://…`` for the production store; unset means embedded SQLite in ``data_dir``.
    May point at a connection pooler in transaction mode (PgBouncer): keel's pooled statements
    rely on no session state (no server-side prepared statements, transaction-scoped locks)."""
    database_direct_url: str | None = None
    """A direct (not pooled) connection to the same Postgres database, for what needs a session
    of its own: the queue's LISTEN and the schema set-up lock. Set it when ``database_url``
    goes through a transaction-mode pooler. Unset: ``database_url``."""
    database_prepared_statements: bool = True
    """Prepare keel's and LangGraph's statements server-side on first use (psycopg's
    ``prepare_threshold=0``): about 40 % less Postgres CPU per run (``bench.capacity``). Set it
    to false behind a transaction-mode pooler that does not track prepared statements (PgBouncer
    before 1.21, or without ``max_prepared_statements``): there a prepared statement may be
    missing on the next transaction's server connection."""
    data_dir: Path = Path(".keel")
    """Folder of the embedded store (SQLite files, the generated signing key)."""
    model_provider: ModelProvider = "local"
    """Which model provider the gateway tries first."""
    model_fallbacks: list[ModelProvider] = Field(default_factory=lambda: ["local"])
    """Providers tried in order when the first fails or returns invalid output."""
    openai_model: str = "gpt-4o-mini"
    """Model name for the ``openai`` provider."""
    openai_base_url: str | None = None
    """Base URL of an OpenAI-compatible endpoint (None: the library default)."""
    openai_api_key: SecretStr | None = None
    """Key for the ``openai`` provider; never logged."""
    model_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one model call when no routing file is set (a routing file sets it per
    task); either way a task's calls are cut to fit the policy's per-run ``wall_clock_s``."""
    model_routing: Path | None = None
    """Model routing file (TOML, see ``gateway/routing.toml``): task, risk tier, remaining
    budget and latency target → ordered chain of models. Unset: ``model_provider`` then
    ``model_fallbacks`` for every task."""
    plan_signing_key: SecretStr | None = None
    """HMAC key that signs plans. Unset: ``plan_signing_key_file``, else a random key generated
    once per data dir. It is the keyring's configured key (:mod:`keel.keys`, id ``k-cfg-…``):
    ``keel keys rotate-signing`` adds newer keys to the ring in keel's database."""
    plan_signing_key_file: Path | None = None
    """File holding the plan-signing key (a mounted secret), read when ``plan_signing_key`` is unset."""
    key_encryption_key: SecretStr | None = None
    """Key-encryption key (KEK) of the plan-signing keys keel generates (``keel keys
    rotate-signing``, the shared default key on Postgres): their material is stored in the
    database encrypted under it (:mod:`keel.keys`), so a dump or backup holds no usable key.
    Any long random string (16 characters or more; a Fernet key is derived from it); every
    server and worker of a deployment needs the same one. Unset: ``key_encryption_key_file``;
    neither: generated keys are stored unencrypted (a warning; refused with ``KEEL_ENV=prod``)."""
    key_encryption_key_file: Path | None = None
    """File holding the KEK (a mounted secret), read when ``key_encryption_key`` is unset."""
    key_encryption_keys_previous: SecretStr | None = None
    """Earlier KEKs, comma-separated: keys stored under them still decrypt until ``keel keys
    rewrap-signing`` has re-encrypted them under ``key_encryption_key``."""
    key_encryption_keys_previous_file: Path | None = None
    """File holding the earlier KEKs (one a line, or comma-separated), read when
    ``key_encryption_keys_previous`` is unset."""
    env: Literal["dev", "staging", "prod"] = "dev"
    """Deployment environment (``KEEL_ENV``): selects the policy pack's ``[env.<name>]`` tool
    allowlists and overrides; in ``staging`` side-effecting tools dry-run unless the pack says
    otherwise. Recorded in each run's versions and spans."""
    policy_file: Path | None = None
    """Policy pack (TOML). Unset: the bundled ``support-v1``."""
    langgraph_config: Path | None = None
    """The ``langgraph.json`` whose graphs keel serves (``keel serve|worker|run --config``
    overrides it). Unset: ``./langgraph.json`` if there is one, else keel's own."""
    fixtures: Path | None = None
    """Back-office fixtures loaded when no back office exists yet (demo, ``langgraph dev``)."""
    now: datetime | None = None
    """Clock override (ISO 8601). Unset: the wall clock."""
    tool_timeout_s: float = 5.0
    """Timeout around each tool call."""
    tool_rate_per_minute: int = 600
    """Per-tenant tool-call rate limit."""
    api_rate_per_minute: float = 1200
    """Requests per minute per API key (``keel serve``)."""
    api_max_body_bytes: int = 1_048_576
    """Largest request body ``keel serve`` accepts (413 above)."""
    worker_lease_s: float = 30.0
    """How long a worker's claim on a run lasts without a heartbeat."""
    worker_run_threads: int | None = Field(default=None, ge=1)
    """Threads of LangGraph's executor per run in a worker (the run config's
    ``max_concurrency``): each run otherwise gets up to ``min(32, cores + 4)`` for its
    parallel tasks and background checkpoint writes. 1 suits linear graphs (the support
    graph): one thread writes checkpoints while the worker's thread runs the next node; a
    step's parallel tasks then run one after another, and a node that waits on tasks it
    submitted from inside a parallel step would wait forever. Unset: LangGraph's default."""
    worker_queue_pool_size: int = Field(default=3, ge=1)
    """Postgres connections of a ``keel worker`` process's own pool for claiming runs and
    heartbeating their leases: apart from the pool of checkpoint writes, stream events, run
    outcomes and stores, so the lease protocol never waits behind them however many runs the
    process holds."""
    worker_claim_gate_lag_ms: float = Field(default=20.0, ge=0)
    """A ``keel worker`` process stops claiming new runs while its scheduling lag (how late a
    sampler thread wakes up: GIL contention and CPU starvation) is above this many ms and it
    holds ``worker_claim_gate_floor`` runs or more (:mod:`engine.claim_gate`): a claimed run's
    wall-clock cap is running, a queued one's is not. 0 turns the gate off."""
    worker_claim_gate_floor: int = Field(default=32, ge=1)
    """Runs a worker process holds below which the claim gate always admits a claim."""
    worker_max_lease_expiries: int = Field(default=3, ge=1)
    """Times a run's lease may expire (its worker was killed, crashed or hung while running
    it) before the run is dead-lettered with reason ``lease_expired_repeatedly`` instead of
    being taken over again: a run that kills every worker it lands on would otherwise be
    retried forever. An admin's retry from the dead letters resets the count."""
    startup_timeout_s: float = Field(default=180.0, gt=0)
    """How long ``keel serve`` and ``keel worker`` keep retrying their start-up (exponential
    backoff with jitter) while the database is unreachable or restarting, before giving up."""
    db_pool_timeout_s: float = Field(default=3.0, gt=0)
    """Longest wait for a pooled Postgres connection. During an outage a request fails after
    this (HTTP 503 with ``Retry-After``) instead of hanging; psycopg_pool's default is 30 s."""
    db_connect_timeout_s: int = Field(default=5, ge=2)
    """libpq ``connect_timeout`` of keel's Postgres connections (an unreachable host, not a
    refused connection, would otherwise block for the OS's TCP timeout)."""
    log_level: str = "INFO"
    """Level of keel's loggers."""
    metrics_token: SecretStr | None = None
    """Bearer token of the operator's Prometheus scraper: ``GET /metrics`` with
    ``Authorization: Bearer …`` shows every tenant's series. Without it (or unset) only a
    tenant's admin key scrapes, and sees its own tenant's series only."""
    cors_origins: list[str] = Field(default_factory=lambda: ["https://smith.langchain.com"])
    """Browser origins allowed to call the API (CORS): LangGraph Studio's by default, so Studio
    can debug a running keel. Calls still need an API key; no cookie is ever honoured
    cross-origin (the console's session cookie is SameSite=Strict). ``[]`` turns CORS off."""
    log_format: Literal["json", "text"] = "json"
    """``keel serve``/``keel worker`` log lines: one JSON object each (correlation id, tenant,
    thread, run, trace id on every line) or plain text."""
    review_sweep_s: float = Field(default=1.0, gt=0)
    """How often each worker applies expired approval deadlines and delivers due webhooks."""
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    """Attempts of one webhook delivery before it goes to the webhook dead letters."""
    webhook_backoff_base_s: float = Field(default=2.0, gt=0)
    """First retry delay of a failed webhook delivery (doubling, with jitter, up to the cap)."""
    webhook_backoff_cap_s: float = Field(default=300.0, gt=0)
    """Longest delay between two attempts of one webhook delivery."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one webhook POST."""

    @field_validator("now")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    @property
    def is_postgres(self) -> bool:
        """True when the production Postgres store is configured."""
        return bool(self.database_url) and self.database_url.startswith(("postgres://", "postgresql://"))

    def clock(self) -> datetime:
        """The run's "now": the override if set, else the UTC wall clock."""
        return self.now or datetime.now(UTC)

    def signing_key(self) -> bytes:
        """The plan-signing key; generated and kept in ``data_dir`` if not configured."""
        if self.plan_signing_key is not None:
            return self.plan_signing_key.get_secret_value().encode()
        if self.plan_signing_key_file is not None:
            try:
                key = self.plan_signing_key_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"KEEL_PLAN_SIGNING_KEY_FILE: cannot read {self.plan_signing_key_file}: "
                                 f"{e.strerror or e}") from None
            if not key:
                raise ConfigError(f"KEEL_PLAN_SIGNING_KEY_FILE: {self.plan_signing_key_file} is empty")
            return key.encode()
        path = self.data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()

    def key_encryption_keys(self) -> tuple[bytes | None, list[bytes]]:
        """The current KEK (None: none configured) and the earlier ones, from the environment or
        files; a KEK shorter than 16 characters, or earlier KEKs without a current one, are refused."""
        current = _secret_setting("KEEL_KEY_ENCRYPTION_KEY", self.key_encryption_key, self.key_encryption_key_file)
        previous_text = _secret_setting("KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS", self.key_encryption_keys_previous,
                                        self.key_encryption_keys_previous_file)
        previous = [p.strip() for p in (previous_text or "").replace("\n", ",").split(",") if p.strip()]
        for name, value in [("KEEL_KEY_ENCRYPTION_KEY", current), *(("KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS", p)
                                                                   for p in previous)]:
            if value is not None and len(value) < 16:
                raise ConfigError(f"{name}: a key-encryption key must be 16 characters or more (a long random "
                                  "string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if previous and current is None:
            raise ConfigError("KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS is set but KEEL_KEY_ENCRYPTION_KEY is not: "
                              "set the current key-encryption key too")
        return (current.encode() if current else None), [p.encode() for p in previous]

    def policy_path(self) -> Path:
        """The policy pack file in force."""
        return self.policy_file or (PACKAGE_DIR.parent / "guards" / "policies" / "support-v1.toml")


def _secret_setting(name: str, value: SecretStr | None, file: Path | None) -> str | None:
    """A secret from ``NAME`` or, when unset, the file ``NAME_FILE`` names (stripped); None if
    neither is set. An unreadable or empty file is a :class:`ConfigError` (never the secret)."""
    if value is not None:
        return value.get_secret_value().strip() or None
    if file is None:
        return None
    try:
        text = file.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{name}_FILE: cannot read {file}: {e.strerror or e}") from None
    if not text:
        raise ConfigError(f"{name}_FILE: {file} is empty")
    return text


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
