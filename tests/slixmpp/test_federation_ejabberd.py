"""Federation (RFC 6120 server-to-server streams) between rookery and a real ejabberd.

rookery serves rookery.test on 127.0.0.2 and ejabberd ejabberd.test on 127.0.0.4, both with the
standard ports and certificates from certs/test/. rookery finds ejabberd through [s2s.routes],
ejabberd finds rookery through SRV records ejabberd.py puts in its resolver's cache. slixmpp
clients log in to each side and talk across."""

import asyncio

import pytest
from slixmpp import JID

from conftest import CERTS, STANDARD_PORTS, TIMEOUT, Server, connected, run
from ejabberd import Ejabberd
from test_federation import create_room, groupchat_both_ways, next_body, wait_for

ROOKERY, EJABBERD = "rookery.test", "ejabberd.test"
WAIT = 15  # every wait for something to cross between the servers


def rookery_s2s(dialback=True, trust_ca=True):
    """The [s2s] tables of the rookery under test."""
    trust = f'trust = ["{CERTS / "ca.pem"}"]\n' if trust_ca else ""
    return (
        "[s2s]\n"
        "require_tls = true\n"
        f"dialback = {'true' if dialback else 'false'}\n"
        f"{trust}"
        "[s2s.routes]\n"
        '"ejabberd.test" = "127.0.0.4:5269"\n'
        '"conference.ejabberd.test" = "127.0.0.4:5269"\n'
    )


@pytest.fixture
def servers(tmp_path, request):
    """Starts servers on demand (`servers.rookery(...)`, `servers.ejabberd(...)`), each with
    alice, bob and carol (password = name), and stops them all at the end."""

    class Servers:
        def __init__(self):
            self.started = []

        def rookery(self, **s2s):
            d = tmp_path / "rookery"
            d.mkdir()
            s = Server(
                d,
                domain=ROOKERY,
                address="127.0.0.2",
                ports=STANDARD_PORTS,
                cert=CERTS / "rookery.test.pem",
                key=CERTS / "rookery.test.key",
                extra=rookery_s2s(**s2s),
            )
            for u in ("alice", "bob", "carol"):
                s.add_user(f"{u}@{ROOKERY}", u)
            self.started.append(s)
            return s.start()

        def ejabberd(self, **kwargs):
            e = Ejabberd(tmp_path, **kwargs)
            self.started.append(e)  # stop() also removes its directory
            e.start()
            for u in ("alice", "bob", "carol"):
                e.add_user(u, u)
            return e

    servers = Servers()
    yield servers
    codes = {s: s.stop() for s in reversed(servers.started)}
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        for s in servers.started:
            if isinstance(s, Server):
                print("---- rookery log ----\n" + s.log.read_text())
            else:
                print(f"---- ejabberd log ({s.kept_log}) ----\n" + s.log_text())
    for s, code in codes.items():
        if isinstance(s, Server):
            assert code == 0, f"rookery exited with {code} after SIGTERM:\n{s.log.read_text()}"


async def chat_both_ways(alice, bob):
    """alice is on rookery.test, bob on ejabberd.test."""
    alice.send_message(mto=f"bob@{EJABBERD}", mbody="hello from rookery", mtype="chat")
    msg = await next_body(bob, "hello from rookery")
    assert msg["from"] == JID(f"alice@{ROOKERY}/a")
    assert msg["to"].bare == f"bob@{EJABBERD}"
    bob.send_message(mto=f"alice@{ROOKERY}/a", mbody="hello from ejabberd", mtype="chat")
    msg = await next_body(alice, "hello from ejabberd")
    assert msg["from"] == JID(f"bob@{EJABBERD}/b")
    assert msg["to"] == JID(f"alice@{ROOKERY}/a")


def authenticated(ejabberd, direction, mech, remote):
    """Whether ejabberd logs a stream of this direction ("inbound", "outbound") between its
    domain and remote as authenticated by mech ("EXTERNAL", "dialback"). It names the
    originating server first."""
    local = ejabberd.domain
    pair = f"{local} -> {remote}" if direction == "outbound" else f"{remote} -> {local}"
    return ejabberd.wait_for_log(f"Accepted {direction} s2s {mech} authentication {pair}")


def test_verified_certificates_subscriptions_presence_and_messages(servers):
    # Without mod_s2s_dialback ejabberd authenticates peers by certificate only (SASL EXTERNAL),
    # in both directions.
    rookery = servers.rookery(dialback=True, trust_ca=True)
    ejabberd = servers.ejabberd(trust_ca=True, dialback=False)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        for c in (alice, bob):
            c.auto_authorize = True
            c.auto_subscribe = True

        # alice asks; bob's client approves and asks back; alice's approves.
        alice.send_presence_subscription(pto=f"bob@{EJABBERD}")
        await wait_for(
            lambda: alice.client_roster[f"bob@{EJABBERD}"]["subscription"] == "both",
            "alice's subscription to bob: both",
        )
        await wait_for(
            lambda: bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both",
            "bob's subscription to alice: both",
        )
        await wait_for(
            lambda: "b" in alice.client_roster[f"bob@{EJABBERD}"].resources,
            "bob's presence at alice",
        )
        await wait_for(
            lambda: "a" in bob.client_roster[f"alice@{ROOKERY}"].resources,
            "alice's presence at bob",
        )
        # Both servers keep the subscriptions: a fresh roster fetch says the same.
        await asyncio.wait_for(alice.get_roster(), TIMEOUT)
        await asyncio.wait_for(bob.get_roster(), TIMEOUT)
        assert alice.client_roster[f"bob@{EJABBERD}"]["subscription"] == "both"
        assert bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both"

        await chat_both_ways(alice, bob)

        # bob going offline reaches alice as unavailable presence.
        gone = asyncio.Event()
        alice.add_event_handler(
            "presence_unavailable",
            lambda p: gone.set() if p["from"] == JID(f"bob@{EJABBERD}/b") else None,
        )
        await bob.close()
        await asyncio.wait_for(gone.wait(), WAIT)
        await alice.close()

    run(go())
    assert authenticated(ejabberd, "inbound", "EXTERNAL", ROOKERY), "rookery's stream in"
    assert authenticated(ejabberd, "outbound", "EXTERNAL", ROOKERY), "ejabberd's stream out"


def test_dialback_with_an_untrusted_certificate(servers):
    # ejabberd presents a self-signed certificate that rookery cannot verify, and trusts none of
    # rookery's either: both directions can only be authenticated by dialback. ejabberd's XML
    # codec knows the dialback elements by their prefixed names (db:result, db:verify, with
    # xmlns:db declared on the stream header) and silently drops a <result/> or <verify/> that
    # declares jabber:server:dialback as its default namespace instead.
    rookery = servers.rookery(dialback=True, trust_ca=True)
    ejabberd = servers.ejabberd(cert="self-signed-ejabberd.test", trust_ca=False, dialback=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        await chat_both_ways(alice, bob)
        # And again, over the streams that are now established.
        alice.send_message(mto=f"bob@{EJABBERD}/b", mbody="second", mtype="chat")
        await next_body(bob, "second")
        bob.send_message(mto=f"alice@{ROOKERY}", mbody="second back", mtype="chat")
        await next_body(alice, "second back")
        await alice.close()
        await bob.close()

    run(go())
    assert authenticated(ejabberd, "inbound", "dialback", ROOKERY), "rookery's stream in"
    assert authenticated(ejabberd, "outbound", "dialback", ROOKERY), "ejabberd's stream out"


def test_verified_certificates_without_dialback(servers):
    # ejabberd offers dialback too, but with certificates both sides can verify, EXTERNAL is
    # used both ways; rookery, with dialback off, must authenticate ejabberd by its certificate.
    rookery = servers.rookery(dialback=False, trust_ca=True)
    ejabberd = servers.ejabberd(trust_ca=True, dialback=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        await chat_both_ways(alice, bob)
        await alice.close()
        await bob.close()

    run(go())
    assert authenticated(ejabberd, "inbound", "EXTERNAL", ROOKERY), "rookery's stream in"
    assert authenticated(ejabberd, "outbound", "EXTERNAL", ROOKERY), "ejabberd's stream out"


def test_rooms_on_either_side(servers):
    rookery = servers.rookery()
    ejabberd = servers.ejabberd()

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice", plugins=("xep_0045",))
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob", plugins=("xep_0045",))

        # An ejabberd user in a rookery room.
        room = f"room@conference.{ROOKERY}"
        await create_room(alice, room, "Local")
        await groupchat_both_ways(alice, bob, room)

        # A rookery user in an ejabberd room.
        room = f"room@{ejabberd.muc}"
        await create_room(bob, room, "Local")
        await groupchat_both_ways(bob, alice, room)

        await alice.close()
        await bob.close()

    run(go())
