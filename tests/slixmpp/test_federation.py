"""Federation (RFC 6120 server-to-server streams) between rookery and a real Prosody.

rookery serves rookery.test on 127.0.0.2 and Prosody prosody.test on 127.0.0.3, both with the
standard ports and certificates from certs/test/. rookery finds Prosody through [s2s.routes],
Prosody finds rookery through the hosts file prosody.py gives it. slixmpp clients log in to
each side and talk across."""

import asyncio
import re
import socket
import ssl
import time
import urllib.request

import pytest
from slixmpp import JID

from conftest import CERTS, STANDARD_PORTS, TIMEOUT, Server, connected, run
from prosody import Prosody

ROOKERY, PROSODY = "rookery.test", "prosody.test"
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
        '"prosody.test" = "127.0.0.3:5269"\n'
        '"conference.prosody.test" = "127.0.0.3:5269"\n'
        '"nowhere.test" = "127.0.0.9:5269"\n'
    )


@pytest.fixture
def servers(tmp_path, request):
    """Starts servers on demand (`servers.rookery(...)`, `servers.prosody(...)`), each with
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

        def prosody(self, **kwargs):
            p = Prosody(tmp_path, **kwargs)
            self.started.append(p)  # stop() also removes its directory
            for u in ("alice", "bob", "carol"):
                p.add_user(u, u)
            return p.start()

    servers = Servers()
    yield servers
    codes = {s: s.stop() for s in reversed(servers.started)}
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        for s in servers.started:
            if isinstance(s, Server):
                print("---- rookery log ----\n" + s.log.read_text())
            else:
                print(f"---- prosody log ({s.kept_log}) ----\n" + s.log_text())
    for s, code in codes.items():
        if isinstance(s, Server):
            assert code == 0, f"rookery exited with {code} after SIGTERM:\n{s.log.read_text()}"


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


def collect_errors(client):
    errors = asyncio.Queue()
    client.add_event_handler("message_error", errors.put_nowait)
    return errors


async def chat_both_ways(alice, bob):
    """alice is on rookery.test, bob on prosody.test."""
    alice.send_message(mto=f"bob@{PROSODY}", mbody="hello from rookery", mtype="chat")
    msg = await next_body(bob, "hello from rookery")
    assert msg["from"] == JID(f"alice@{ROOKERY}/a")
    assert msg["to"].bare == f"bob@{PROSODY}"
    bob.send_message(mto=f"alice@{ROOKERY}/a", mbody="hello from prosody", mtype="chat")
    msg = await next_body(alice, "hello from prosody")
    assert msg["from"] == JID(f"bob@{PROSODY}/b")
    assert msg["to"] == JID(f"alice@{ROOKERY}/a")


def test_verified_certificates_subscriptions_presence_and_messages(servers):
    rookery = servers.rookery(dialback=True, trust_ca=True)
    prosody = servers.prosody(secure_auth=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        for c in (alice, bob):
            c.auto_authorize = True
            c.auto_subscribe = True

        # alice asks; bob's client approves and asks back; alice's approves.
        alice.send_presence_subscription(pto=f"bob@{PROSODY}")
        await wait_for(
            lambda: alice.client_roster[f"bob@{PROSODY}"]["subscription"] == "both",
            "alice's subscription to bob: both",
        )
        await wait_for(
            lambda: bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both",
            "bob's subscription to alice: both",
        )
        await wait_for(
            lambda: "b" in alice.client_roster[f"bob@{PROSODY}"].resources,
            "bob's presence at alice",
        )
        await wait_for(
            lambda: "a" in bob.client_roster[f"alice@{ROOKERY}"].resources,
            "alice's presence at bob",
        )
        # Both servers keep the subscriptions: a fresh roster fetch says the same.
        await asyncio.wait_for(alice.get_roster(), TIMEOUT)
        await asyncio.wait_for(bob.get_roster(), TIMEOUT)
        assert alice.client_roster[f"bob@{PROSODY}"]["subscription"] == "both"
        assert bob.client_roster[f"alice@{ROOKERY}"]["subscription"] == "both"

        await chat_both_ways(alice, bob)

        # bob going offline reaches alice as unavailable presence.
        gone = asyncio.Event()
        alice.add_event_handler(
            "presence_unavailable",
            lambda p: gone.set() if p["from"] == JID(f"bob@{PROSODY}/b") else None,
        )
        await bob.close()
        await asyncio.wait_for(gone.wait(), WAIT)
        await alice.close()

    run(go())
    # s2s_secure_auth: Prosody accepted rookery's stream only with a verified certificate.
    log = prosody.log_text()
    assert "connection rookery.test->prosody.test is now authenticated for rookery.test" in log


def test_dialback_with_an_untrusted_certificate(servers):
    # Prosody presents a self-signed certificate that rookery cannot verify, and trusts none
    # of rookery's either: both directions can only be authenticated by dialback.
    rookery = servers.rookery(dialback=True, trust_ca=True)
    prosody = servers.prosody(cert="self-signed.test", secure_auth=False, trust_ca=False)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob)
        # And again, over the streams that are now established.
        alice.send_message(mto=f"bob@{PROSODY}/b", mbody="second", mtype="chat")
        await next_body(bob, "second")
        bob.send_message(mto=f"alice@{ROOKERY}", mbody="second back", mtype="chat")
        await next_body(alice, "second back")
        await alice.close()
        await bob.close()

    run(go())
    # What Prosody 0.12 logs (at debug) when dialback authenticates each direction.
    log = prosody.log_text()
    assert "asking rookery.test if key" in log, "rookery did not authenticate by dialback"
    assert "sent dialback key on outgoing s2s stream" in log, "rookery did not offer dialback"


def test_verified_certificates_without_dialback(servers):
    # With dialback off, rookery must authenticate Prosody by its CA-signed certificate.
    rookery = servers.rookery(dialback=False, trust_ca=True)
    prosody = servers.prosody(secure_auth=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob)
        await alice.close()
        await bob.close()

    run(go())


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


def test_rooms_on_either_side(servers):
    rookery = servers.rookery()
    prosody = servers.prosody()

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice", plugins=("xep_0045",))
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob", plugins=("xep_0045",))

        # A Prosody user in a rookery room.
        room = f"room@conference.{ROOKERY}"
        await create_room(alice, room, "Local")
        await groupchat_both_ways(alice, bob, room)

        # A rookery user in a Prosody room.
        room = f"room@conference.{PROSODY}"
        await create_room(bob, room, "Local")
        await groupchat_both_ways(bob, alice, room)

        await alice.close()
        await bob.close()

    run(go())


def test_unreachable_peer_bounces(servers):
    # nowhere.test is routed to 127.0.0.9:5269, where nothing listens.
    rookery = servers.rookery()

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        errors = collect_errors(alice)
        started = time.monotonic()
        msg = alice.make_message(mto="someone@nowhere.test", mbody="anyone?", mtype="chat")
        msg["id"] = "m1"
        msg.send()
        err = await asyncio.wait_for(errors.get(), WAIT)
        assert time.monotonic() - started < WAIT
        assert err["type"] == "error"
        assert err["id"] == "m1"
        assert err["from"].bare == "someone@nowhere.test"
        assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout")
        # The session is unharmed.
        await asyncio.wait_for(alice["xep_0199"].ping(jid=ROOKERY), TIMEOUT)
        await alice.close()

    run(go())


STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    "xmlns:db='jabber:server:dialback' from='prosody.test' to='rookery.test' version='1.0'>"
)


def read_until(sock, pattern, what, timeout=5.0):
    """Reads until the text received so far matches pattern (or the peer closes)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not re.search(pattern, data.decode(errors="replace"), re.S):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {data!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except (ConnectionError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def test_spoofing_peer_gets_nothing_routed(servers):
    rookery = servers.rookery()

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")

        def spoof():
            raw = socket.create_connection(("127.0.0.2", 5269), timeout=5)
            raw.sendall(STREAM_HEADER.encode())
            features = read_until(raw, r"</stream:features>|<stream:features[^>]*/>", "features")
            assert re.search(r"<starttls[^>]*>\s*<required\s*/>", features), features
            raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            assert "<proceed" in read_until(raw, r"<proceed", "proceed")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls = ctx.wrap_socket(raw, server_hostname=ROOKERY)
            tls.sendall(STREAM_HEADER.encode())
            read_until(tls, r"</stream:features>|<stream:features[^>]*/>", "features after TLS")
            tls.sendall(
                b"<message from='evil@elsewhere.test' to='alice@rookery.test' type='chat'>"
                b"<body>spoofed</body></message>"
            )
            answer = read_until(tls, r"</stream:error>|<stream:error[^>]*/>", "a stream error")
            tls.close()
            return answer

        answer = await asyncio.get_running_loop().run_in_executor(None, spoof)
        assert re.search(r"<stream:error>.*<(not-authorized|invalid-from)\b", answer, re.S), answer
        try:
            got = await alice.next_message(timeout=2)
        except asyncio.TimeoutError:
            got = None
        assert got is None, f"alice received {got}"
        await alice.close()

    run(go())


def test_one_bidirectional_stream_carries_both_directions(servers):
    # XEP-0288 with Prosody's mod_s2s_bidi: whichever server connects first, its stream carries
    # the other server's traffic too, so exactly one s2s connection is open between them.
    rookery = servers.rookery()
    prosody = servers.prosody(modules=("s2s_bidi",))

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob)
        await alice.close()
        await bob.close()

    run(go())
    log = prosody.log_text()
    assert "bidirectional stream" in log, "no bidirectional stream was negotiated"
    metrics = urllib.request.urlopen(f"http://127.0.0.2:{STANDARD_PORTS['http']}/metrics").read()
    open_streams = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.decode().splitlines()
        if line.startswith("rookery_connections{") and 'kind="s2s_' in line
    )
    assert open_streams == 1, metrics.decode()
