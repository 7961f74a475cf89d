"""Several keel "hosts" on one machine for the many-hosts test: each host is a ``keel serve``
and a ``keel worker`` with their own data dir, metrics dir and (when the machine allows it)
their own Linux network namespace, sharing only the Postgres database.

Why network namespaces: two processes on one loopback share more than two machines do (every
port, 127.0.0.1 itself). In its own namespace a host reaches nothing but the database, through
a veth pair to the root namespace and a TCP forwarder (Postgres listens on 127.0.0.1 only and
is not reconfigured), and the test reaches the host's API at the host's own address, where both
hosts use the same port. Creating namespaces needs root (CAP_NET_ADMIN) and ``ip``;
:func:`netns_unavailable` says why not, and the hosts then run on loopback with their own ports.

Every namespace and veth made here is named ``kh<pid><letter>`` (unique per test process) and
removed by :meth:`NetNs.close` (the fixture's finalizer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from support.api_helpers import ROOT, free_port, stop, wait_ok, wait_worker

__all__ = ["NetNs", "TcpForwarder", "Host", "netns_unavailable", "make_netns", "start_host", "wait_host",
           "pg_url_via"]

API_PORT = 8123
"""The port every host's API listens on inside its own namespace (the same on both)."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def netns_unavailable() -> str | None:
    """Why this machine cannot give each host its own network namespace (None: it can)."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (platform {sys.platform})"
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    try:  # the whole set-up once: a container may allow `ip netns add` and refuse veth pairs
        make_netns("p").close()
    except RuntimeError as e:
        return str(e)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    out = _ip("-j", "-4", "addr", "show")
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    out = _ip("-j", "-4", "route")
    for r in json.loads(out.stdout or "[]"):
        if r.get("dst", "default") != "default":
            nets.append(ipaddress.ip_network(r["dst"] if "/" in r["dst"] else r["dst"] + "/32", strict=False))
    return nets


def _free_slash30() -> ipaddress.IPv4Network:
    used = _used_networks()
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}.{4 * rng.randint(0, 63)}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /30 in 10.200.0.0/13")


@dataclass
class NetNs:
    """One network namespace joined to the root namespace by a veth pair on a private /30:
    ``root_addr`` (root side) and ``addr`` (the host's side)."""

    name: str
    root_if: str
    root_addr: str
    addr: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        """Remove the veth pair and the namespace (idempotent)."""
        _ip("link", "del", self.root_if)
        _ip("netns", "del", self.name)


def make_netns(letter: str) -> NetNs:
    """A fresh namespace ``kh<pid><letter>`` with loopback up and a veth pair to the root one."""
    name = f"kh{os.getpid()}{letter}"
    ns = NetNs(name=name, root_if=f"{name}r", root_addr="", addr="")
    try:
        net = _free_slash30()
        root_addr, ns_addr = (str(h) for h in net.hosts())
        ns.root_addr, ns.addr = root_addr, ns_addr
        for args in (("netns", "add", name),
                     ("link", "add", ns.root_if, "type", "veth", "peer", "name", f"{name}n", "netns", name),
                     ("addr", "add", f"{root_addr}/30", "dev", ns.root_if),
                     ("link", "set", ns.root_if, "up"),
                     ("-n", name, "addr", "add", f"{ns_addr}/30", "dev", f"{name}n"),
                     ("-n", name, "link", "set", f"{name}n", "up"),
                     ("-n", name, "link", "set", "lo", "up")):
            out = _ip(*args)
            if out.returncode != 0:
                raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    except BaseException:
        ns.close()
        raise
    return ns


class TcpForwarder:
    """Accepts TCP connections on ``(listen_host, any port)`` and pipes each one to ``target``
    (an asyncio loop in a daemon thread): how a host in its own namespace reaches a Postgres
    that listens on the root namespace's 127.0.0.1 only."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.listen_host, self.target = listen_host, target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-forwarder", daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()
        self.port = 0

    def start(self) -> TcpForwarder:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.listen_host, 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self.tasks.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            self.tasks.discard(task)

    def close(self) -> None:
        async def shut() -> None:
            if self.server is not None:
                self.server.close()
            for t in list(self.tasks):
                t.cancel()

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()  # either side gone (a SIGKILLed host): the other connection ends too


def pg_url_via(pg_url: str, host: str, port: int) -> str:
    """``pg_url`` with its server replaced by ``host:port`` (the forwarder)."""
    u = urlsplit(pg_url)
    auth = u.netloc.rpartition("@")[0]
    return urlunsplit(u._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}"))


@dataclass
class Host:
    """One host: its API's URL, its processes, its data dir and environment."""

    name: str
    url: str
    data_dir: Path
    env: dict[str, str]
    netns: NetNs | None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    forwarder: TcpForwarder | None = None

    @property
    def worker_pid(self) -> int:
        return self.procs["worker"].pid

    def command(self, argv: list[str]) -> list[str]:
        return self.netns.command(argv) if self.netns else argv

    def spawn(self, role: str, *args: str) -> subprocess.Popen:
        """``python -m cli ARGS`` on this host (in its namespace), output to ``<role>.log``."""
        log = open(self.data_dir.parent / f"{self.name}-{role}.log", "w")  # noqa: SIM115 - the child keeps it
        p = subprocess.Popen(self.command([sys.executable, "-m", "cli", *args]), env=self.env, cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[role] = p
        return p

    def log(self, role: str) -> Path:
        return self.data_dir.parent / f"{self.name}-{role}.log"

    def kill(self) -> None:
        """SIGKILL every process of the host (a host lost at once)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(timeout=10)

    def close(self) -> None:
        stop(*self.procs.values())
        if self.forwarder is not None:
            self.forwarder.close()
        if self.netns is not None:
            self.netns.close()


def start_host(name: str, *, pg_url: str, base: Path, netns: NetNs | None, lease_s: str,
               extra_env: dict[str, str]) -> Host:
    """Start a host's ``keel serve`` and ``keel worker`` (not waiting for them: :func:`wait_host`)."""
    from support.api_helpers import keel_env

    data_dir = base / name / "data"
    prom = base / name / "prom"
    data_dir.mkdir(parents=True)
    prom.mkdir(parents=True)
    forwarder = None
    if netns is not None:
        pg = urlsplit(pg_url)
        forwarder = TcpForwarder(netns.root_addr, (pg.hostname or "127.0.0.1", pg.port or 5432)).start()
        db_url = pg_url_via(pg_url, netns.root_addr, forwarder.port)
        bind, port = netns.addr, API_PORT
    else:
        db_url, bind, port = pg_url, "127.0.0.1", free_port()
    env = keel_env(KEEL_DATABASE_URL=db_url, KEEL_DATA_DIR=str(data_dir), PROMETHEUS_MULTIPROC_DIR=str(prom),
                   PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **extra_env)
    host = Host(name=name, url=f"http://{bind}:{port}", data_dir=data_dir, env=env, netns=netns, forwarder=forwarder)
    try:
        host.spawn("serve", "serve", "--host", bind, "--port", str(port), "--import", "support.api_toy")
        host.spawn("worker", "worker", "--lease-seconds", lease_s, "--poll-seconds", "0.05",
                   "--import", "support.api_hooks")
    except BaseException:
        host.close()
        raise
    return host


def wait_host(host: Host) -> None:
    """Until the host's API answers and its worker polls the queue."""
    wait_ok(host.url, timeout=90, proc=host.procs["serve"])
    wait_worker(host.log("worker"), host.procs["worker"])
