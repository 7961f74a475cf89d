"""A private PgBouncer in transaction mode in front of the shared PostgreSQL server.

Production deployments often put keel behind a connection pooler; in ``pool_mode =
transaction`` a client holds a server connection only for one transaction, so anything
that relies on session state (server-side prepared statements, session advisory locks,
LISTEN, ``SET``) breaks there. :func:`pgbouncer` starts Debian's ``pgbouncer`` (installed by
``scripts/install-pgbouncer``) on a free loopback port with a small ``default_pool_size``,
trust authentication and every database of the test server reachable by name,
and stops it after the test module. :meth:`PgBouncer.restart` kills it (every client
connection is cut, as in a crash or a redeploy of the pooler) and starts it again on the
same port; :meth:`PgBouncer.admin` runs an admin console command (``RECONNECT``, ``SHOW …``).

As root (the CI container) pgbouncer runs as the ``postgres`` user, as it refuses root.
Without the binary the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from support.api_helpers import free_port

__all__ = ["PgBouncer", "find_pgbouncer", "pgbouncer"]

POOL_SIZE = 4
"""Server connections per (database, user) pair: fewer than a server and a worker open."""


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (``runuser`` passes it on), so that a
    killed test run leaves no pooler behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_pgbouncer() -> str | None:
    """Path of the ``pgbouncer`` binary, if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None)


class PgBouncer:
    """One pgbouncer process in a directory of its own, in front of ``server_url``'s server."""

    def __init__(self, binary: str, server_url: str, *, pool_size: int = POOL_SIZE,
                 query_wait_timeout: int = 20) -> None:
        parts = urlsplit(server_url)
        self.binary = binary
        self.server_url = server_url
        self.user = parts.username or "postgres"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="keel-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        self.pidfile = self.dir / "pgbouncer.pid"
        self.proc: subprocess.Popen | None = None
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 500\n"
            "max_db_connections = 0\n"
            # a client waiting this long for a server connection gets an error (retried by keel)
            f"query_wait_timeout = {query_wait_timeout}\n"
            "server_login_retry = 1\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.pidfile}\n"
        )
        self._as: list[str] = []
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.start()

    def url(self, dbname: str) -> str:
        """URL of database ``dbname`` through the pooler."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def url_for(self, direct_url: str) -> str:
        """``direct_url`` (a database on the pooled server) as reached through the pooler."""
        return urlunsplit(urlsplit(direct_url)._replace(netloc=f"{self.user}@127.0.0.1:{self.port}"))

    def start(self, timeout: float = 15.0) -> None:
        """Start pgbouncer in the foreground of a child process; wait until it answers."""
        self.proc = subprocess.Popen([*self._as, self.binary, str(self.dir / "pgbouncer.ini")], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {self.log_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process: SIGTERM is pgbouncer's immediate shutdown (clients are cut)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:  # pgbouncer itself: ``runuser``, signalled, would wait 2 s more before it exits
            os.kill(int(self.pidfile.read_text().split()[0]), sig)
        except (OSError, ValueError, IndexError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Kill and start again on the same port: every client connection is cut."""
        self.stop()
        self.start()

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one admin console command (simple query protocol); its rows, if any."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True, prepare_threshold=None,
                             connect_timeout=3) as conn:
            cur = conn.execute(command)
            return list(cur.fetchall()) if cur.description else []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"pgbouncer is required in CI (scripts/install-pgbouncer): {reason}")
    pytest.skip(f"no pgbouncer: {reason}")


@pytest.fixture(scope="module")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the test run's server (``pg_url``'s), for
    one test module; ``pgbouncer.url_for(pg_url)`` is the test database through it."""
    binary = find_pgbouncer()
    if binary is None:
        _unavailable("the pgbouncer binary is not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root without a postgres user")
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser")
    bouncer = PgBouncer(binary, pg_url)  # type: ignore[arg-type]
    try:
        yield bouncer
    finally:
        bouncer.close()
