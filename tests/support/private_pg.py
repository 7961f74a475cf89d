"""A private, throwaway PostgreSQL server for tests that stop, start and restart it.

The shared server (``KEEL_TEST_PG_URL``) serves every other test running at the same time,
so tests of database outages never touch it: :func:`private_pg` runs ``initdb`` into a
temporary directory and ``pg_ctl`` on a free port (socket in that directory, loopback
only, ``fsync=off``), once per session and only when a test asks for it. As root (the CI
container) the server runs as the ``postgres`` user, since PostgreSQL refuses root.

Binaries are found through ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin``. Without
them the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from support.api_helpers import free_port

__all__ = ["PrivatePostgres", "find_bindir", "private_pg"]


def find_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``, if PostgreSQL's server binaries are installed."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class PrivatePostgres:
    """One PostgreSQL server in a directory of its own; ``stop``/``start``/``restart`` at will."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="keel-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        out = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                             timeout=timeout, cwd=self.dir)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
                " -c synchronous_commit=off -c max_connections=60")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "-t", "30",
                  "start")

    def stop(self) -> None:
        """Fast shutdown: every session is terminated (``AdminShutdown``), as in a restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A new database on the server; its URL."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def close(self) -> None:
        try:
            if self.running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"a private PostgreSQL server is required in CI: {reason}")
    pytest.skip(f"no private PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server for this session (started on first use, removed at the end)."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root without a postgres user")
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser")
    server = PrivatePostgres(bindir)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()
