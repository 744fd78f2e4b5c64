"""Service discovery, version, ping, blocking, vCard and in-band registration via slixmpp's
own plugins."""

import asyncio

import pytest
from slixmpp.exceptions import IqError

from conftest import TIMEOUT, Client, connected, run


def test_disco_version_and_ping(server):
    async def go():
        c = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0092",))
        info = await asyncio.wait_for(c["xep_0030"].get_info(jid="localhost"), TIMEOUT)
        features = set(info["disco_info"]["features"])
        for f in ("urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:blocking", "vcard-temp", "msgoffline"):
            assert f in features, f
        identities = info["disco_info"]["identities"]
        assert any(i[0] == "server" and i[1] == "im" for i in identities), identities
        version = await asyncio.wait_for(c["xep_0092"].get_version("localhost"), TIMEOUT)
        assert version["software_version"]["name"] == "rookery"
        rtt = await asyncio.wait_for(c["xep_0199"].ping(jid="localhost"), TIMEOUT)
        assert rtt >= 0
        await c.close()

    run(go())


def test_blocking(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice")
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0191",))
        await asyncio.wait_for(bob["xep_0191"].block("alice@localhost"), TIMEOUT)
        blocked = await asyncio.wait_for(bob["xep_0191"].get_blocked(), TIMEOUT)
        assert {str(j) for j in blocked["blocklist"]["items"]} == {"alice@localhost"}
        errors = asyncio.Queue()
        alice.add_event_handler("message_error", lambda m: errors.put_nowait(m))
        alice.send_message(mto="bob@localhost", mbody="hello?", mtype="chat")
        err = await asyncio.wait_for(errors.get(), TIMEOUT)
        assert err["error"]["condition"] == "service-unavailable"
        with pytest.raises(asyncio.TimeoutError):
            await bob.next_message(timeout=0.5)
        await asyncio.wait_for(bob["xep_0191"].unblock("alice@localhost"), TIMEOUT)
        alice.send_message(mto="bob@localhost", mbody="unblocked", mtype="chat")
        msg = await bob.next_message()
        assert msg["body"] == "unblocked"
        await alice.close()
        await bob.close()

    run(go())


def test_vcard(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0054",))
        vcard = alice["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Liddell"
        vcard["NICKNAME"] = "al"
        await asyncio.wait_for(alice["xep_0054"].publish_vcard(vcard), TIMEOUT)
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0054",))
        got = await asyncio.wait_for(
            bob["xep_0054"].get_vcard("alice@localhost", cached=False, local=False), TIMEOUT
        )
        assert got["vcard_temp"]["FN"] == "Alice Liddell"
        await alice.close()
        await bob.close()

    run(go())


def test_private_storage_bookmarks(server):
    """XEP-0048 bookmarks kept in private XML storage (XEP-0049), as slixmpp stores them by
    default: another session of the account reads them back, another account cannot."""

    async def go():
        plugins = ("xep_0048",)
        alice = await connected(server, "alice@localhost/a", "alice", plugins=plugins)
        bookmarks = alice["xep_0048"].stanza.Bookmarks()
        bookmarks.add_conference("room@conference.localhost", "al", name="Room", autojoin=True)
        await asyncio.wait_for(alice["xep_0048"].set_bookmarks(bookmarks), TIMEOUT)

        other = await connected(server, "alice@localhost/b", "alice", plugins=plugins)
        got = await asyncio.wait_for(other["xep_0048"].get_bookmarks(), TIMEOUT)
        conferences = got["private"]["bookmarks"]["conferences"]
        assert [(str(c["jid"]), c["nick"], c["autojoin"]) for c in conferences] == [
            ("room@conference.localhost", "al", True)
        ]

        bob = await connected(server, "bob@localhost/b", "bob", plugins=plugins)
        # The plugin asks only its own account; the same request addressed to alice's.
        iq = bob.make_iq_get(ito="alice@localhost")
        iq["private"].enable("bookmarks")
        with pytest.raises(IqError) as refused:
            await asyncio.wait_for(iq.send(), TIMEOUT)
        assert refused.value.condition == "forbidden"
        for c in (alice, other, bob):
            await c.close()

    run(go())


async def register(server, user, password):
    c = Client(server, f"{user}@localhost/r", password, plugins=("xep_0077",))
    # slixmpp holds back stanzas until a session exists; registration happens before one.
    c._always_send_everything = True
    outcome = asyncio.get_running_loop().create_future()

    async def on_register(_form):
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = user
        iq["register"]["password"] = password
        try:
            await iq.send(timeout=TIMEOUT)
            outcome.set_result("ok")
        except IqError as e:
            outcome.set_result(e.iq["error"]["condition"])
        c.disconnect()

    c.add_event_handler("register", on_register)
    c.connect(("127.0.0.1", server.c2s))
    return await asyncio.wait_for(outcome, TIMEOUT)


@pytest.mark.server(registration_open=True)
def test_in_band_registration(server):
    async def go():
        assert await register(server, "dave", "davepw") == "ok"
        c = await connected(server, "dave@localhost/d", "davepw")
        await c.close()
        assert await register(server, "dave", "other") == "conflict"

    run(go())
