"""Roster, subscriptions, presence and messages between slixmpp clients."""

import asyncio

from conftest import TIMEOUT, connected, run


async def wait_for(predicate, what):
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_roster_subscriptions_and_presence(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice")
        bob = await connected(server, "bob@localhost/b", "bob")
        alice.auto_authorize = True
        alice.auto_subscribe = True
        bob.auto_authorize = True
        bob.auto_subscribe = True

        await asyncio.wait_for(
            alice.update_roster("bob@localhost", name="Bob", groups=["Friends"]), TIMEOUT
        )
        await wait_for(lambda: "bob@localhost" in alice.client_roster, "roster push")
        item = alice.client_roster["bob@localhost"]
        assert item["name"] == "Bob"
        assert item["groups"] == ["Friends"]

        alice.send_presence_subscription(pto="bob@localhost")
        await wait_for(
            lambda: alice.client_roster["bob@localhost"]["subscription"] == "both",
            "alice's subscription both",
        )
        await wait_for(
            lambda: bob.client_roster["alice@localhost"]["subscription"] == "both",
            "bob's subscription both",
        )
        # A roster get with the version slixmpp holds is answered as current (XEP-0237),
        # and slixmpp keeps what the pushes gave it.
        await asyncio.wait_for(alice.get_roster(), TIMEOUT)
        assert alice.client_roster["bob@localhost"]["subscription"] == "both"

        bob.send_presence(pshow="dnd", pstatus="busy")
        await wait_for(
            lambda: alice.client_roster["bob@localhost"].resources.get("b", {}).get("show")
            == "dnd",
            "bob's presence at alice",
        )
        unavailable = asyncio.Event()
        alice.add_event_handler(
            "presence_unavailable",
            lambda p: unavailable.set() if str(p["from"]) == "bob@localhost/b" else None,
        )
        await bob.close()
        await asyncio.wait_for(unavailable.wait(), TIMEOUT)
        await alice.close()

    run(go())


def test_messages_to_bare_and_full_jid(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice")
        bob = await connected(server, "bob@localhost/b", "bob")
        alice.send_message(mto="bob@localhost", mbody="to bare", mtype="chat")
        msg = await bob.next_message()
        assert msg["body"] == "to bare"
        assert str(msg["from"]) == "alice@localhost/a"
        alice.send_message(mto="bob@localhost/b", mbody="to full", mtype="chat")
        msg = await bob.next_message()
        assert msg["body"] == "to full"
        await alice.close()
        await bob.close()

    run(go())


def test_offline_message_with_delay(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice")
        alice.send_message(mto="carol@localhost", mbody="later, carol", mtype="chat")
        await asyncio.wait_for(alice["xep_0199"].ping(jid="localhost"), TIMEOUT)
        carol = await connected(server, "carol@localhost/c", "carol", plugins=("xep_0203",))
        msg = await carol.next_message()
        assert msg["body"] == "later, carol"
        assert msg["delay"]["stamp"] is not None
        await alice.close()
        await carol.close()

    run(go())


def test_restart_keeps_offline_messages(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice")
        alice.send_message(mto="bob@localhost", mbody="across a restart", mtype="chat")
        await asyncio.wait_for(alice["xep_0199"].ping(jid="localhost"), TIMEOUT)
        await alice.close()

    run(go())
    assert server.stop() == 0
    server.start()

    async def after():
        bob = await connected(server, "bob@localhost/b", "bob")
        msg = await bob.next_message()
        assert msg["body"] == "across a restart"
        await bob.close()

    run(after())


def test_carbons(server):
    async def go():
        phone = await connected(server, "alice@localhost/phone", "alice")
        desk = await connected(server, "alice@localhost/desk", "alice", plugins=("xep_0280",))
        bob = await connected(server, "bob@localhost/b", "bob")
        await asyncio.wait_for(desk["xep_0280"].enable(), TIMEOUT)
        received, sent = asyncio.Queue(), asyncio.Queue()
        desk.add_event_handler("carbon_received", lambda m: received.put_nowait(m))
        desk.add_event_handler("carbon_sent", lambda m: sent.put_nowait(m))
        bob.send_message(mto="alice@localhost/phone", mbody="hi phone", mtype="chat")
        m = await asyncio.wait_for(received.get(), TIMEOUT)
        assert m["carbon_received"]["body"] == "hi phone"
        phone.send_message(mto="bob@localhost", mbody="from the phone", mtype="chat")
        m = await asyncio.wait_for(sent.get(), TIMEOUT)
        assert m["carbon_sent"]["body"] == "from the phone"
        for c in (phone, desk, bob):
            await c.close()

    run(go())
