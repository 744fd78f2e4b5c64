"""Harness shared by the federation tests: a rookery serving rookery.test on 127.0.0.2 with the
standard ports and the test certificates, peers (Prosody, ejabberd) started on demand, and the
conversations the tests hold across them."""

import asyncio
import time

import pytest
from slixmpp import JID

from conftest import CERTS, STANDARD_PORTS, Server

ROOKERY = "rookery.test"
WAIT = 15  # every wait for something to cross between the servers
USERS = ("alice", "bob", "carol")  # password = name


def rookery_s2s(routes, dialback=True, trust_ca=True):
    """The [s2s] tables of the rookery under test; routes maps a peer domain to its address
    (its MUC service is routed there too)."""
    trust = f'trust = ["{CERTS / "ca.pem"}"]\n' if trust_ca else ""
    lines = [
        "[s2s]",
        "require_tls = true",
        f"dialback = {'true' if dialback else 'false'}",
        trust.rstrip("\n"),
        "[s2s.routes]",
    ]
    for domain, address in routes.items():
        lines.append(f'"{domain}" = "{address}:5269"')
        lines.append(f'"conference.{domain}" = "{address}:5269"')
    return "\n".join(line for line in lines if line) + "\n"


class Servers:
    """Servers started on demand, each with USERS, stopped in reverse order at the end."""

    def __init__(self, tmp_path, routes):
        self.tmp_path = tmp_path
        self.routes = routes
        self.started = []

    def rookery(self, **s2s):
        d = self.tmp_path / "rookery"
        d.mkdir()
        s = Server(
            d,
            domain=ROOKERY,
            address="127.0.0.2",
            ports=STANDARD_PORTS,
            cert=CERTS / "rookery.test.pem",
            key=CERTS / "rookery.test.key",
            extra=rookery_s2s(self.routes, **s2s),
        )
        for u in USERS:
            s.add_user(f"{u}@{ROOKERY}", u)
        self.started.append(s)
        return s.start()

    def peer(self, kind, register_before_start, **kwargs):
        """A peer server of `kind` (Prosody registers accounts offline, ejabberd once up);
        its stop() also removes its directory."""
        p = kind(self.tmp_path, **kwargs)
        self.started.append(p)
        if register_before_start:
            for u in USERS:
                p.add_user(u, u)
            return p.start()
        p.start()
        for u in USERS:
            p.add_user(u, u)
        return p

    def stop(self, request):
        codes = {s: s.stop() for s in reversed(self.started)}
        call = getattr(request.node, "rep_call", None)
        if call is not None and call.failed:
            for s in self.started:
                if isinstance(s, Server):
                    print("---- rookery log ----\n" + s.log.read_text())
                else:
                    print(f"---- {type(s).__name__} log ({s.kept_log}) ----\n" + s.log_text())
        for s, code in codes.items():
            if isinstance(s, Server):
                assert code == 0, f"rookery exited with {code} after SIGTERM:\n{s.log.read_text()}"


def servers_fixture(routes):
    """A pytest fixture giving each test its Servers with these s2s routes."""

    @pytest.fixture
    def servers(tmp_path, request):
        s = Servers(tmp_path, routes)
        yield s
        s.stop(request)

    return servers


async def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def next_body(client, body, timeout=WAIT):
    """The next message with this body (others, such as MUC presence-less noise, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await client.next_message(max(0.01, deadline - time.monotonic()))
        if msg["body"] == body:
            return msg


async def chat_both_ways(alice, bob, peer):
    """alice is on rookery.test, bob on the peer domain."""
    alice.send_message(mto=f"bob@{peer}", mbody="hello from rookery", mtype="chat")
    msg = await next_body(bob, "hello from rookery")
    assert msg["from"] == JID(f"alice@{ROOKERY}/a")
    assert msg["to"].bare == f"bob@{peer}"
    bob.send_message(mto=f"alice@{ROOKERY}/a", mbody=f"hello from {peer}", mtype="chat")
    msg = await next_body(alice, f"hello from {peer}")
    assert msg["from"] == JID(f"bob@{peer}/b")
    assert msg["to"] == JID(f"alice@{ROOKERY}/a")


async def subscribe_see_presence_and_chat(alice, bob, peer):
    """alice (rookery.test) and bob (the peer) subscribe to each other, see each other's
    presence, chat both ways, and alice sees bob go offline."""
    for c in (alice, bob):
        c.auto_authorize = True
        c.auto_subscribe = True

    # alice asks; bob's client approves and asks back; alice's approves.
    alice.send_presence_subscription(pto=f"bob@{peer}")
    await wait_for(
        lambda: alice.client_roster[f"bob@{peer}"]["subscription"] == "both",
        "alice's subscription to bob: both",
    )
    await wait_for(
        lambda: bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both",
        "bob's subscription to alice: both",
    )
    await wait_for(
        lambda: "b" in alice.client_roster[f"bob@{peer}"].resources,
        "bob's presence at alice",
    )
    await wait_for(
        lambda: "a" in bob.client_roster[f"alice@{ROOKERY}"].resources,
        "alice's presence at bob",
    )
    # Both servers keep the subscriptions: a fresh roster fetch says the same.
    await asyncio.wait_for(alice.get_roster(), WAIT)
    await asyncio.wait_for(bob.get_roster(), WAIT)
    assert alice.client_roster[f"bob@{peer}"]["subscription"] == "both"
    assert bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both"

    await chat_both_ways(alice, bob, peer)

    # bob going offline reaches alice as unavailable presence.
    gone = asyncio.Event()
    alice.add_event_handler(
        "presence_unavailable",
        lambda p: gone.set() if p["from"] == JID(f"bob@{peer}/b") else None,
    )
    await bob.close()
    await asyncio.wait_for(gone.wait(), WAIT)


async def create_room(client, room, nick):
    """Joins (creating) and submits the default configuration, which unlocks a new room."""
    muc = client["xep_0045"]
    await muc.join_muc_wait(JID(room), nick, maxstanzas=0, timeout=WAIT)
    form = await muc.get_room_config(JID(room), timeout=WAIT)
    await muc.set_room_config(JID(room), form, timeout=WAIT)


async def groupchat_both_ways(local, remote, room):
    """local created room and is in it as Local; remote joins as Remote; both talk."""
    joined = asyncio.Event()
    local.add_event_handler(
        f"muc::{room}::got_online",
        lambda p: joined.set() if p["from"] == JID(f"{room}/Remote") else None,
    )
    await remote["xep_0045"].join_muc_wait(JID(room), "Remote", maxstanzas=0, timeout=WAIT)
    await asyncio.wait_for(joined.wait(), WAIT)
    assert "Local" in remote["xep_0045"].get_roster(JID(room))

    local.send_message(mto=room, mbody="from the local side", mtype="groupchat")
    msg = await next_body(remote, "from the local side")
    assert msg["type"] == "groupchat"
    assert msg["from"] == JID(f"{room}/Local")
    remote.send_message(mto=room, mbody="from the remote side", mtype="groupchat")
    msg = await next_body(local, "from the remote side")
    assert msg["type"] == "groupchat"
    assert msg["from"] == JID(f"{room}/Remote")
    # The sender gets its own message reflected, across servers too.
    msg = await next_body(remote, "from the remote side")
    assert msg["from"] == JID(f"{room}/Remote")
