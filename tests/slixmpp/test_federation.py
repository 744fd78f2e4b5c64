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


from conftest import STANDARD_PORTS, TIMEOUT, connected, run
from federation import (
    ROOKERY,
    WAIT,
    chat_both_ways,
    create_room,
    groupchat_both_ways,
    next_body,
    servers_fixture,
    subscribe_see_presence_and_chat,
)
from prosody import Prosody

PROSODY = "prosody.test"
servers = servers_fixture({PROSODY: "127.0.0.3", "nowhere.test": "127.0.0.9"})


def start_prosody(servers, **kwargs):
    return servers.peer(Prosody, register_before_start=True, **kwargs)


def collect_errors(client):
    errors = asyncio.Queue()
    client.add_event_handler("message_error", errors.put_nowait)
    return errors


def test_verified_certificates_subscriptions_presence_and_messages(servers):
    rookery = servers.rookery(dialback=True, trust_ca=True)
    prosody = start_prosody(servers, secure_auth=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await subscribe_see_presence_and_chat(alice, bob, PROSODY)
        await alice.close()

    run(go())
    # s2s_secure_auth: Prosody accepted rookery's stream only with a verified certificate.
    log = prosody.log_text()
    assert "connection rookery.test->prosody.test is now authenticated for rookery.test" in log


def test_dialback_with_an_untrusted_certificate(servers):
    # Prosody presents a self-signed certificate that rookery cannot verify, and trusts none
    # of rookery's either: both directions can only be authenticated by dialback.
    rookery = servers.rookery(dialback=True, trust_ca=True)
    prosody = start_prosody(servers, cert="self-signed.test", secure_auth=False, trust_ca=False)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob, PROSODY)
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
    prosody = start_prosody(servers, secure_auth=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob, PROSODY)
        await alice.close()
        await bob.close()

    run(go())


def test_rooms_on_either_side(servers):
    rookery = servers.rookery()
    prosody = start_prosody(servers)

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
    prosody = start_prosody(servers, modules=("s2s_bidi",))

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(prosody, f"bob@{PROSODY}/b", "bob")
        await chat_both_ways(alice, bob, PROSODY)
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
