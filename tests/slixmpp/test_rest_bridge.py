"""The REST bridge with a slixmpp occupant in the room behind a chat: what an application posts
over HTTP arrives live in the room, and what the occupant writes there gets the chat's next
number over HTTP."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from conftest import TIMEOUT, connected, run


def call(server, method, path, body=None):
    """One API request with the standard library's HTTP client: (status, JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http}/api/v1{path}", data=data, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            text = resp.read().decode()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


async def api(server, method, path, body=None):
    return await asyncio.to_thread(call, server, method, path, body)


async def next_groupchat(client, body):
    while True:
        msg = await client.next_message()
        if msg["type"] == "groupchat" and msg["body"] == body:
            return msg


def test_rest_messages_reach_the_room_and_room_messages_reach_rest(server):
    async def go():
        status, app = await api(server, "POST", "/applications", {"name": "Support"})
        assert status == 201 and app["chats_count"] == 0
        token = app["token"]
        status, chat = await api(server, "POST", f"/applications/{token}/chats")
        assert status == 201 and chat["number"] == 1
        room = chat["jid"]
        status, _ = await api(
            server, "POST", f"/applications/{token}/chats/1/members", {"jid": "alice@localhost"}
        )
        assert status == 201

        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0045",))
        await alice["xep_0045"].join_muc_wait(JID(room), "alice", maxstanzas=0, timeout=TIMEOUT)

        status, posted = await api(
            server, "POST", f"/applications/{token}/chats/1/messages", {"body": "How can we help?"}
        )
        assert status == 201 and posted == {"number": 1}
        got = await next_groupchat(alice, "How can we help?")
        assert got["from"] == JID(room + "/Support")

        alice.send_message(mto=JID(room), mbody="my printer is on fire", mtype="groupchat")
        await next_groupchat(alice, "my printer is on fire")
        for _ in range(50):
            status, messages = await api(server, "GET", f"/applications/{token}/chats/1/messages")
            if len(messages) == 2:
                break
            await asyncio.sleep(0.1)
        assert [(m["number"], m["body"]) for m in messages] == [
            (1, "How can we help?"),
            (2, "my printer is on fire"),
        ]
        status, found = await api(
            server, "POST", f"/applications/{token}/chats/1/messages/search", {"body": "printer"}
        )
        assert status == 200 and [m["number"] for m in found] == [2]

        # A user who is not a member is kept out of the room.
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0045",))
        with pytest.raises(PresenceError) as refused:
            await bob["xep_0045"].join_muc_wait(JID(room), "bob", maxstanzas=0, timeout=TIMEOUT)
        assert refused.value.condition == "registration-required"
        status, err = await api(server, "GET", f"/applications/{token}/chats/7")
        assert status == 404 and err["code"] == "not_found"
        await alice.close()
        await bob.close()

    run(go())
