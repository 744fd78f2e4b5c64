"""Federation (RFC 6120 server-to-server streams) between rookery and a real ejabberd.

rookery serves rookery.test on 127.0.0.2 and ejabberd ejabberd.test on 127.0.0.4, both with the
standard ports and certificates from certs/test/. rookery finds ejabberd through [s2s.routes],
ejabberd finds rookery through SRV records ejabberd.py puts in its resolver's cache. slixmpp
clients log in to each side and talk across."""

from conftest import connected, run
from ejabberd import Ejabberd
from federation import (
    ROOKERY,
    chat_both_ways,
    create_room,
    groupchat_both_ways,
    next_body,
    servers_fixture,
    subscribe_see_presence_and_chat,
)

EJABBERD = "ejabberd.test"
servers = servers_fixture({EJABBERD: "127.0.0.4"})


def start_ejabberd(servers, **kwargs):
    return servers.peer(Ejabberd, register_before_start=False, **kwargs)


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
    ejabberd = start_ejabberd(servers, trust_ca=True, dialback=False)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        await subscribe_see_presence_and_chat(alice, bob, EJABBERD)
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
    ejabberd = start_ejabberd(servers, cert="self-signed-ejabberd.test", trust_ca=False, dialback=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        await chat_both_ways(alice, bob, EJABBERD)
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
    ejabberd = start_ejabberd(servers, trust_ca=True, dialback=True)

    async def go():
        alice = await connected(rookery, f"alice@{ROOKERY}/a", "alice")
        bob = await connected(ejabberd, f"bob@{EJABBERD}/b", "bob")
        await chat_both_ways(alice, bob, EJABBERD)
        await alice.close()
        await bob.close()

    run(go())
    assert authenticated(ejabberd, "inbound", "EXTERNAL", ROOKERY), "rookery's stream in"
    assert authenticated(ejabberd, "outbound", "EXTERNAL", ROOKERY), "ejabberd's stream out"


def test_rooms_on_either_side(servers):
    rookery = servers.rookery()
    ejabberd = start_ejabberd(servers)

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
