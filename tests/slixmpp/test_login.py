"""Logging in with slixmpp over STARTTLS and direct TLS, and failing to."""

import asyncio

from conftest import Client, connected, run


def test_scram_login_over_starttls(server):
    async def go():
        c = await connected(server, "alice@localhost/desk", "alice")
        assert str(c.boundjid) == "alice@localhost/desk"
        assert c.is_connected()
        await c.close()

    run(go())


def test_login_over_direct_tls(server):
    async def go():
        c = await connected(server, "alice@localhost/phone", "alice", direct_tls=True)
        assert str(c.boundjid) == "alice@localhost/phone"
        await c.close()

    run(go())


def test_wrong_password_fails(server):
    async def go():
        c = Client(server, "alice@localhost/x", "not-her-password")
        assert not await c.login()
        assert c.failed.is_set()
        assert not c.started.is_set()
        await c.close()

    run(go())


def test_same_resource_twice_gives_conflict(server):
    async def go():
        first = await connected(server, "bob@localhost/same", "bob")
        # slixmpp reconnects by itself after a stream error; keep the first one down.
        first.add_event_handler("stream_error", lambda _e: first.abort())
        second = await connected(server, "bob@localhost/same", "bob")
        for _ in range(100):
            if first.stream_errors:
                break
            await asyncio.sleep(0.05)
        assert first.stream_errors == ["conflict"]
        alice = await connected(server, "alice@localhost/a", "alice")
        alice.send_message(mto="bob@localhost/same", mbody="to the newer one", mtype="chat")
        msg = await second.next_message()
        assert msg["body"] == "to the newer one"
        await second.close()
        await alice.close()

    run(go())
