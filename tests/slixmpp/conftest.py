"""Harness for the slixmpp suite: starts the `rookery` binary on free loopback ports in a
temporary directory, creates accounts with its CLI, and connects slixmpp clients that trust the
certificate the server generated (or the test CA in certs/test/ when the server is given one of
its certificates). prosody.py has the same interface for a real Prosody (federation tests)."""

import asyncio
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import slixmpp

REPO = Path(__file__).resolve().parents[2]
CERTS = REPO / "certs" / "test"
TIMEOUT = 10
# The standard ports, for servers on addresses of their own (federation tests: 127.0.0.2).
STANDARD_PORTS = {"c2s": 5222, "c2s_tls": 5223, "s2s": 5269, "http": 5280, "component": 5347}


def binary() -> str:
    if os.environ.get("ROOKERY_BIN"):
        return os.environ["ROOKERY_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(Path(target) / "debug" / "rookery")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that was free a moment ago, for a server started after it is chosen.
    Taken below Linux's ephemeral range (32768 and up): a port the kernel hands out for binding
    to port 0 is also what it picks for the next outgoing connection, so a server started a
    moment later found it taken now and then (tests/common/services.rs does the same). A port
    is handed out once per test run: the check closes its socket, so two servers not yet
    started could get the same one."""
    first, count = 20_000, 12_000
    start = random.randrange(count)
    for i in range(count):
        port = first + (start + i) % count
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise AssertionError("no free port below the ephemeral range")


class Server:
    """A `rookery serve` in tmp. ports: None → free ports, or a dict like STANDARD_PORTS.
    component: also listen for XEP-0114 components (`listen.component`). cert/key: paths of a
    certificate and its key (for example CERTS / "rookery.test.pem"); without them the server
    generates a self-signed one. extra: TOML appended after the [registration] table."""

    def __init__(
        self,
        tmp: Path,
        registration_open=False,
        extra="",
        domain="localhost",
        address="127.0.0.1",
        ports=None,
        component=False,
        cert=None,
        key=None,
    ):
        self.dir = tmp
        self.data = tmp / "data"
        self.domain = domain
        self.address = address
        ports = dict(ports) if ports else {}
        for name in ("c2s", "c2s_tls", "s2s", "http", "component"):
            ports.setdefault(name, free_port())
        self.c2s = ports["c2s"]
        self.c2s_tls = ports["c2s_tls"]
        self.s2s = ports["s2s"]
        self.http = ports["http"]
        self.component = ports["component"] if component else None
        assert (cert is None) == (key is None), "set both cert and key, or neither"
        self.cert = cert
        self.config = tmp / "rookery.toml"
        self.config.write_text(
            f'domain = "{domain}"\n'
            f'data_dir = "{self.data}"\n'
            f"[listen]\n"
            f'c2s = "{address}:{self.c2s}"\n'
            f'c2s_tls = "{address}:{self.c2s_tls}"\n'
            f's2s = "{address}:{self.s2s}"\n'
            f'http = "{address}:{self.http}"\n'
            + (f'component = "{address}:{self.component}"\n' if component else "")
            + (f'[tls]\ncert = "{cert}"\nkey = "{key}"\n' if cert else "")
            + f"[registration]\n"
            f"open = {'true' if registration_open else 'false'}\n"
            f"{extra}"
        )
        self.log = tmp / "server.log"
        self.proc = None

    def cli(self, *args, stdin=None):
        return subprocess.run(
            [binary(), *args, "--config", str(self.config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def add_user(self, user, password):
        r = self.cli("user", "add", user, "--password", password)
        assert r.returncode == 0, r.stderr

    def start(self):
        self.proc = subprocess.Popen(
            [binary(), "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),
            env={**os.environ, "RUST_LOG": "info"},
        )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection((self.address, self.c2s), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start: " + self.log.read_text())

    def stop(self):
        """SIGTERM must close every stream and exit 0 (a contract of `rookery serve`)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not stop on SIGTERM")

    def ssl_context(self):
        if self.cert:
            return ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        ctx = ssl.create_default_context(cafile=str(self.data / "cert.pem"))
        return ctx


@pytest.fixture
def server(tmp_path, request):
    """A started server with alice, bob and carol (password = name)."""
    marker = request.node.get_closest_marker("server")
    kwargs = marker.kwargs if marker else {}
    s = Server(tmp_path, **kwargs)
    for u in ("alice", "bob", "carol"):
        s.add_user(f"{u}@{s.domain}", u)
    s.start()
    yield s
    code = s.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(s.log.read_text())
    assert code == 0, f"exit code {code} after SIGTERM:\n{s.log.read_text()}"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_configure(config):
    config.addinivalue_line("markers", "server(**kwargs): options for the server fixture")


class Client(slixmpp.ClientXMPP):
    """A slixmpp client whose events can be awaited. server: a Server or a prosody.Prosody
    (what it uses: address, c2s, c2s_tls, ssl_context())."""

    def __init__(self, server, jid, password, plugins=()):
        super().__init__(jid, password)
        self.rookery = server
        self.ssl_context = server.ssl_context()
        for p in ("xep_0030", "xep_0199", *plugins):
            self.register_plugin(p)
        self.started = asyncio.Event()
        self.failed = asyncio.Event()
        self.ended = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.stream_errors = []
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("failed_all_auth", lambda _: self.failed.set())
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))

    async def login(self, direct_tls=False):
        port = self.rookery.c2s_tls if direct_tls else self.rookery.c2s
        self.connect((self.rookery.address, port), use_ssl=direct_tls)
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(self.started.wait()), asyncio.ensure_future(self.failed.wait())],
            timeout=TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        return self.started.is_set()

    async def next_message(self, timeout=TIMEOUT):
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def close(self):
        self.disconnect()
        try:
            await asyncio.wait_for(self.ended.wait(), TIMEOUT)
        except asyncio.TimeoutError:
            pass


async def connected(server, jid, password, plugins=(), direct_tls=False, presence=True):
    c = Client(server, jid, password, plugins)
    assert await c.login(direct_tls), f"{jid} could not log in"
    if presence:
        await asyncio.wait_for(c.get_roster(), TIMEOUT)
        c.send_presence()
    return c


def run(coro):
    """Each test runs on its own event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, 60))
