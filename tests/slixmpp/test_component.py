"""External components (XEP-0114): a component written with slixmpp connects to rookery's
`listen.component` and serves echo.localhost."""

import asyncio

import pytest
import slixmpp
from slixmpp import JID

from conftest import TIMEOUT, connected, run

DOMAIN = "localhost"
COMPONENT = "echo.localhost"
SECRET = "s3cret"
FEATURE = "urn:example:echo"

pytestmark = pytest.mark.server(
    component=True, extra=f'[components."{COMPONENT}"]\nsecret = "{SECRET}"\n'
)


class Echo(slixmpp.ComponentXMPP):
    """Sends every message with a body back to its sender, from the address it was sent to."""

    def __init__(self, server, domain=COMPONENT, secret=SECRET):
        super().__init__(domain, secret, server.address, server.component)
        self.register_plugin("xep_0030")
        self["xep_0030"].add_identity(category="component", itype="generic", name="Echo", jid=domain)
        self["xep_0030"].add_feature(FEATURE, jid=domain)
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.stream_errors = []
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))
        self.add_event_handler("message", self.echo)

    def echo(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            msg.reply(msg["body"]).send()

    async def start(self):
        """Connects; True once the handshake is accepted, False if the stream ends first."""
        self.connect()
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(self.started.wait()), asyncio.ensure_future(self.ended.wait())],
            timeout=TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        return self.started.is_set()

    async def close(self):
        self.disconnect()
        try:
            await asyncio.wait_for(self.ended.wait(), TIMEOUT)
        except asyncio.TimeoutError:
            pass


def test_echo_and_disco(server):
    async def go():
        echo = Echo(server)
        assert await echo.start(), f"the component was refused: {echo.stream_errors}"
        alice = await connected(server, f"alice@{DOMAIN}/a", "alice")

        alice.send_message(mto=f"bot@{COMPONENT}", mbody="echo this", mtype="chat")
        msg = await alice.next_message()
        assert msg["body"] == "echo this"
        assert msg["from"] == JID(f"bot@{COMPONENT}")
        assert msg["to"] == JID(f"alice@{DOMAIN}/a")

        info = await alice["xep_0030"].get_info(jid=COMPONENT, timeout=TIMEOUT)
        assert info["type"] == "result"
        assert info["from"] == JID(COMPONENT)
        assert ("component", "generic", None, "Echo") in info["disco_info"]["identities"]
        assert FEATURE in info["disco_info"]["features"]
        # The server lists the component among its services.
        items = await alice["xep_0030"].get_items(jid=DOMAIN, timeout=TIMEOUT)
        assert COMPONENT in [i[0] for i in items["disco_items"]["items"]]

        await alice.close()
        await echo.close()

    run(go())


def test_wrong_secret_is_refused(server):
    async def go():
        echo = Echo(server, secret="wrong")
        assert not await echo.start(), "a component with the wrong secret was accepted"
        await asyncio.wait_for(echo.ended.wait(), TIMEOUT)
        assert echo.stream_errors == ["not-authorized"]

    run(go())


def test_unknown_domain_is_refused(server):
    async def go():
        echo = Echo(server, domain=f"nope.{DOMAIN}")
        assert not await echo.start(), "a component for an unknown domain was accepted"
        await asyncio.wait_for(echo.ended.wait(), TIMEOUT)
        assert echo.stream_errors == ["host-unknown"]

    run(go())


def test_message_while_the_component_is_away_bounces(server):
    async def go():
        alice = await connected(server, f"alice@{DOMAIN}/a", "alice")
        errors = asyncio.Queue()
        alice.add_event_handler("message_error", errors.put_nowait)
        msg = alice.make_message(mto=f"x@{COMPONENT}", mbody="anyone?", mtype="chat")
        msg["id"] = "away1"
        msg.send()
        err = await asyncio.wait_for(errors.get(), TIMEOUT)
        assert err["id"] == "away1"
        assert err["from"] == JID(f"x@{COMPONENT}")
        assert err["error"]["condition"] == "service-unavailable"
        await alice.close()

    run(go())
