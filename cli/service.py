"""``keel serve``, ``keel worker`` and ``keel keys``: registered into keel's argparse CLI.

``keel serve`` honours ``KEEL_DATA_DIR``, ``KEEL_DATABASE_URL``, ``KEEL_FIXTURES`` and
``KEEL_NOW`` (through :class:`keel.config.Settings`); each command builds its own
:class:`~engine.runtime.Runtime` from them and closes it on the way out. Without a database URL it is the
embedded default: SQLite in the data dir, an in-process worker, the demo fixtures
loaded, and a hint on how to create a key. With Postgres it only serves; run
``keel worker`` processes (any number) to execute runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cli.commands import CliError
from engine.correlation import install_correlation_logging
from engine.queue import RunQueue
from engine.registry import GraphConfigError, graph_ids, use_config
from engine.runtime import DEMO_FIXTURES, Runtime
from engine.worker import run_workers
from keel.config import get_settings
from keel.db import StartupError, retry_while_unavailable
from keel.errors import ConfigError
from keel.keys import Keyring, KeyringError, SigningKeyInfo
from keel.principals import hash_key, key_id_of

__all__ = ["register", "main", "CONFIG_HELP"]

log = logging.getLogger("keel.api")

CONFIG_HELP = ("langgraph.json whose graphs to serve (as `langgraph dev --config`; default: KEEL_LANGGRAPH_CONFIG, "
               "else ./langgraph.json, else keel's own)")


def _runtime() -> Runtime:
    return Runtime(get_settings())


def _logging() -> None:
    install_correlation_logging(get_settings().log_format)  # JSON lines unless KEEL_LOG_FORMAT=text


def _warm_up(rt: Runtime, modules: list[str] | None, installed: set[str] | None = None) -> Any:
    """Create every store's tables, the checkpointer's and the queue's, and compile the
    graphs, once, before serving. On Postgres this happens under an advisory lock:
    ``CREATE TABLE IF NOT EXISTS`` and PostgresSaver's migrations are not safe when two
    processes run them at the same moment on a fresh database.

    Every step is idempotent, so the whole set-up is retried (:func:`_start_up`) when the
    database goes away part-way; ``installed`` (kept across those attempts) names the
    extension modules already installed, which are not installed twice."""
    with rt.setup_lock():
        _imports(rt, modules, installed)
        rt.db  # noqa: B018 - builds every store's tables
        rt.keyring  # noqa: B018 - the signing keys' table, this server's configured key registered
        queue = RunQueue(rt.db).setup()
        rt.checkpointer  # noqa: B018
        for g in graph_ids():
            rt.graph(g)
        return queue


def _start_up(rt: Runtime, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a start-up step touching the database), retried with exponential backoff and
    jitter while the database is unavailable, for up to ``KEEL_STARTUP_TIMEOUT_S``: a worker or
    server started next to a database that is restarting or not up yet waits for it instead of
    exiting. Configuration errors (credentials, unknown database) fail at once."""
    if not rt.settings.is_postgres:
        return fn()
    return retry_while_unavailable(fn, timeout_s=rt.settings.startup_timeout_s, what=what)


def _cannot_start(what: str, e: Exception) -> int:
    """Report a start-up failure as one line (no stack trace); the exit status."""
    print(f"{what}: cannot start: {e}", file=sys.stderr, flush=True)
    return 2


def _imports(rt: Runtime, modules: list[str] | None, installed: set[str] | None = None) -> None:
    """Import extension modules; a module's ``keel_install(runtime)`` is called (graphs,
    instrumentation), once per module name in ``installed`` (a retried start-up)."""
    for name in modules or []:
        if installed is not None and name in installed:
            continue
        mod = importlib.import_module(name)
        hook = getattr(mod, "keel_install", None)
        if callable(hook):
            hook(rt)
        if installed is not None:
            installed.add(name)


def _use_graphs(what: str, args: argparse.Namespace) -> int | None:
    """Load the graphs of ``langgraph.json`` (``--config``); an exit status if that failed."""
    try:
        path = use_config(getattr(args, "config", None))
    except GraphConfigError as e:
        return _cannot_start(what, e)
    log.info("%s: graphs of %s: %s", what, path, ", ".join(graph_ids()))
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API (uvicorn)."""
    _logging()
    if (failed := _use_graphs("keel serve", args)) is not None:
        return failed
    rt = _runtime()
    embedded = not rt.settings.is_postgres if args.embedded_worker is None else args.embedded_worker
    installed: set[str] = set()

    def start() -> Any:
        # the HTTP stack (FastAPI, the console) is imported by `keel serve` alone: every other
        # command's start-up would pay for it otherwise
        from api.app import create_app
        from console import mount as mount_console

        _warm_up(rt, args.imports, installed)
        if not rt.settings.is_postgres:
            rt.ensure_fixtures()
        return mount_console(create_app(  # the review console at /console
            rt,
            embedded_worker=embedded,
            rate_per_minute=args.rate_per_minute or rt.settings.api_rate_per_minute,
            max_body_bytes=args.max_body_bytes or rt.settings.api_max_body_bytes,
            worker_concurrency=args.concurrency,
            worker_kwargs={"lease_s": args.lease_seconds or rt.settings.worker_lease_s},
        ))

    try:
        app = _start_up(rt, "keel serve", start)
    except (StartupError, GraphConfigError, KeyringError) as e:  # KeyringError: prod without a KEK
        rt.close()
        return _cannot_start("keel serve", e)
    where = "Postgres" if rt.settings.is_postgres else f"SQLite in {rt.settings.data_dir}"
    print(f"keel serve: http://{args.host}:{args.port} on {where}; "
          f"{'in-process worker' if embedded else 'runs are executed by `keel worker` processes'}", flush=True)
    if not rt.settings.is_postgres:
        tenant = _demo_tenant(rt)
        print("Create an API key (printed alone on the last line), then call the API with it:\n"
              f"  keel keys create --tenant {tenant} --role requester --user alice\n"
              f"  keel keys create --tenant {tenant} --role approver --user bob\n"
              f"  curl -H 'x-api-key: KEY' http://{args.host}:{args.port}/assistants/search -d '{{}}'",
              flush=True)
    # the runtime is left open: the embedded worker may still be finishing a step as the process ends
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def _demo_tenant(rt: Runtime) -> str:
    try:
        return json.loads(Path(rt.settings.fixtures or DEMO_FIXTURES).read_text())["tenant"]
    except Exception:
        return "TENANT"


def cmd_worker(args: argparse.Namespace) -> int:
    """Execute queued runs until SIGTERM/SIGINT."""
    _logging()
    if (failed := _use_graphs("keel worker", args)) is not None:
        return failed
    rt = _runtime()
    try:
        return _work(args, rt)
    finally:
        rt.close()


def _work(args: argparse.Namespace, rt: Runtime) -> int:
    installed: set[str] = set()
    try:
        queue = _start_up(rt, "keel worker", lambda: _warm_up(rt, args.imports, installed))
    except (StartupError, GraphConfigError, KeyringError) as e:  # KeyringError: prod without a KEK
        return _cannot_start("keel worker", e)
    # claims and heartbeats on a small pool of their own: the lease protocol never waits behind
    # checkpoint writes, stream events and outcomes (which stay on the main pool)
    claims = RunQueue(rt.db.lane("queue", rt.settings.worker_queue_pool_size))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("worker: signal %d, finishing the current run", signum)
        stop.set()
        queue.wake_all()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = run_workers(rt, queue, concurrency=args.concurrency, stop=stop, lease_s=args.lease_seconds or rt.settings.worker_lease_s,
                          poll_s=args.poll_seconds, backoff_base=args.backoff_base, backoff_cap=args.backoff_cap,
                          claims=claims)
    print(f"keel worker: {args.concurrency} worker thread(s) on "
          f"{'Postgres' if rt.settings.is_postgres else rt.settings.data_dir}", flush=True)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    return 0


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` as a positive timedelta (argparse type)."""
    m = _DURATION.match(text or "")
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m, 3600s or 2w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _usage_error(what: str, message: str) -> int:
    print(f"keel keys {what}: {message}", file=sys.stderr)
    return 2


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key; the key alone is the last line of standard output."""
    rt = _runtime()
    try:
        key = rt.principals.create_key(args.tenant, args.user, args.role, expires_in=args.expires_in)
        expires = next((k.expires_at for k in rt.principals.list_keys(args.tenant)
                        if k.key_id == key_id_of(hash_key(key))), None)
        rt.audit.append(args.tenant, "admin", actor="cli", data={"event": "key_created", "user": args.user,
                                                                 "role": args.role, "key_id": key_id_of(hash_key(key)),
                                                                 "expires_at": expires})
    finally:
        rt.close()
    until = f", expires {expires}" if expires else ""
    print(f"created a {args.role} key for {args.user} in tenant {args.tenant} "
          f"(id {key_id_of(hash_key(key))}{until}; shown once; stored hashed):")
    print(key, flush=True)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List API keys by id: tenant, user, role, created, expires, revoked (never a key or its digest)."""
    rt = _runtime()
    try:
        keys = rt.principals.list_keys(args.tenant)
    finally:
        rt.close()
    if args.json:
        print(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
        return 0
    print(f"{'ID':<17} {'TENANT':<16} {'USER':<16} {'ROLE':<10} {'CREATED (UTC)':<20} {'EXPIRES (UTC)':<20} STATE")
    for k in keys:
        state = "revoked" if k.revoked else "expired" if k.expired else "active"
        print(f"{k.key_id:<17} {k.tenant:<16} {k.user_id:<16} {k.role:<10} {k.created_at[:19]:<20} "
              f"{(k.expires_at or 'never')[:19]:<20} {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an API key, named by its id (``keel keys list``) or the key itself."""
    if not args.key.strip():
        return _usage_error("revoke", "name a key id (see `keel keys list`) or a key")
    rt = _runtime()
    try:
        revoked = rt.principals.revoke(args.key.strip())
    finally:
        rt.close()
    if not revoked:
        return _usage_error("revoke", "no such key")
    print("revoked")
    return 0


@contextmanager
def _keyring(what: str) -> Iterator[Keyring]:
    """The plan-signing keyring for one ``keel keys WHAT`` command; what it refuses (and a
    key-encryption key missing or unreadable) is a one-line error, exit status 2."""
    rt = _runtime()
    try:
        yield rt.keyring
    except (KeyringError, ConfigError) as e:
        raise CliError(f"{what}: {e}") from None
    finally:
        rt.close()


def cmd_keys_rotate_signing(args: argparse.Namespace) -> int:
    """A new active plan-signing key; the previous one keeps verifying the plans it signed."""
    with _keyring("rotate-signing") as ring:
        info = ring.rotate()
    print(f"plan-signing key {info.key_id} is active, {_stored(info)}; earlier keys verify only (retire one with "
          f"`keel keys retire-signing ID`)")
    return 0


def _stored(info: SigningKeyInfo) -> str:
    """How a key's material is kept, for operators (never the material)."""
    if info.source == "configured":
        return "not stored (configured)"
    return f"encrypted under {info.kek_id}" if info.encrypted else "stored UNENCRYPTED"


def cmd_keys_rewrap_signing(args: argparse.Namespace) -> int:
    """Re-encrypt every generated plan-signing key under the current key-encryption key."""
    with _keyring("rewrap-signing") as ring:
        report = ring.rewrap()
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return 0
    sources = ", ".join(f"{n} from {src}" for src, n in sorted(report.rewrapped.items()))
    print(f"rewrapped {sum(report.rewrapped.values())} plan-signing key(s) under {report.kek_id}"
          f"{f' ({sources})' if sources else ''}; {report.unchanged} already under it")
    return 0


def cmd_keys_retire_signing(args: argparse.Namespace) -> int:
    """Retire a plan-signing key: plans it signed neither execute nor get approved."""
    with _keyring("retire-signing") as ring:
        info = ring.retire(args.key_id)
    print(f"plan-signing key {info.key_id} retired")
    return 0


def cmd_keys_list_signing(args: argparse.Namespace) -> int:
    """List plan-signing keys (ids and states, never their material)."""
    with _keyring("list-signing") as ring:
        keys = ring.list()
    if args.json:
        print(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
        return 0
    for k in keys:
        print(f"{k.key_id:<24} {k.state:<12} {k.source:<11} created {k.created_at}  {_stored(k)}")
    return 0


def register(sub: Any) -> None:
    """Add ``serve``, ``worker`` and ``keys`` to keel's subcommands."""
    s = sub.add_parser("serve", help="run the HTTP API (embedded worker on SQLite)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8123)
    s.add_argument("--embedded-worker", dest="embedded_worker", action="store_true", default=None,
                   help="execute runs in this process (default on SQLite)")
    s.add_argument("--no-embedded-worker", dest="embedded_worker", action="store_false",
                   help="only serve; `keel worker` executes runs (default on Postgres)")
    s.add_argument("--concurrency", type=int, default=1, help="embedded worker threads")
    s.add_argument("--rate-per-minute", type=float, default=None, help="requests per minute per API key")
    s.add_argument("--max-body-bytes", type=int, default=None, help="largest request body")
    s.add_argument("--lease-seconds", type=float, default=None, help="embedded worker's lease")
    s.add_argument("--log-level", default="warning", help="uvicorn's log level")
    s.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import MODULE first; its keel_install(runtime) is called (extra graphs, instrumentation)")
    s.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="execute queued runs (run any number of these)")
    w.add_argument("--concurrency", type=int, default=1, help="worker threads in this process")
    w.add_argument("--lease-seconds", type=float, default=None, help="lease; a dead worker's runs resume after it")
    w.add_argument("--poll-seconds", type=float, default=0.1, help="idle poll interval")
    w.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay after a transient failure")
    w.add_argument("--backoff-cap", type=float, default=60.0, help="longest retry delay")
    w.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="import MODULE first; its keel_install(runtime) is called")
    w.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    w.set_defaults(func=cmd_worker)

    k = sub.add_parser("keys", help="manage API keys and plan-signing keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key (printed alone on the last line)")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--role", required=True, choices=["requester", "approver", "admin"])
    kc.add_argument("--user", required=True)
    kc.add_argument("--expires-in", dest="expires_in", type=parse_duration, default=None, metavar="DURATION",
                    help="the key stops working after this long (30d, 12h, 90m, 2w); default: never")
    kc.set_defaults(func=cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys by id (no secret is printed)")
    kl.add_argument("--tenant", default=None, help="only this tenant's keys")
    kl.add_argument("--json", action="store_true", help="one JSON array")
    kl.set_defaults(func=cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key (at once, on every server)")
    kr.add_argument("key", metavar="ID|KEY", help="the key's id from `keel keys list`, or the key itself")
    kr.set_defaults(func=cmd_keys_revoke)
    ks = ksub.add_parser("rotate-signing", help="new active plan-signing key; the previous one verifies only")
    ks.set_defaults(func=cmd_keys_rotate_signing)
    kt = ksub.add_parser("retire-signing", help="retire a plan-signing key (its plans no longer execute)")
    kt.add_argument("key_id", metavar="ID", help="a key id from `keel keys list-signing`")
    kt.set_defaults(func=cmd_keys_retire_signing)
    kls = ksub.add_parser("list-signing", help="list plan-signing keys (ids, states, encrypted under which KEK)")
    kls.add_argument("--json", action="store_true", help="one JSON array")
    kls.set_defaults(func=cmd_keys_list_signing)
    kw = ksub.add_parser("rewrap-signing", help="re-encrypt every generated plan-signing key under the current "
                                                "KEEL_KEY_ENCRYPTION_KEY (after setting or rotating it)")
    kw.add_argument("--json", action="store_true", help="one JSON object")
    kw.set_defaults(func=cmd_keys_rewrap_signing)


def main(argv: list[str] | None = None) -> int:
    """``python -m cli.service``: these commands alone, without keel's other subcommands
    and without the logging set-up of :func:`cli.main.main`."""
    p = argparse.ArgumentParser(prog="keel")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:  # as cli.main reports it
        print(f"keel {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
