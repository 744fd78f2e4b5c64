"""Group chat (XEP-0045) and the message archive (XEP-0313) through slixmpp's own plugins."""

import asyncio

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from conftest import TIMEOUT, connected, run

ROOM = "team@conference.localhost"


async def next_groupchat(client, body=None):
    while True:
        msg = await client.next_message()
        if msg["type"] == "groupchat" and msg["body"] and (body is None or msg["body"] == body):
            return msg


def test_room_create_configure_chat_history_and_members_only(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0045",))
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0045",))
        carol = await connected(server, "carol@localhost/c", "carol", plugins=("xep_0045",))
        muc_a, muc_b, muc_c = alice["xep_0045"], bob["xep_0045"], carol["xep_0045"]

        await muc_a.join_muc_wait(ROOM, "Alice", maxstanzas=0, timeout=TIMEOUT)
        form = await muc_a.get_room_config(ROOM, timeout=TIMEOUT)
        fields = form.get_fields()
        assert "muc#roomconfig_persistentroom" in fields
        fields["muc#roomconfig_roomname"]["value"] = "Team"
        fields["muc#roomconfig_persistentroom"]["value"] = True
        await muc_a.set_room_config(ROOM, form, timeout=TIMEOUT)

        await muc_b.join_muc_wait(ROOM, "Bob", maxstanzas=0, timeout=TIMEOUT)
        alice.send_message(mto=ROOM, mbody="hello team", mtype="groupchat")
        got = await next_groupchat(bob, "hello team")
        assert got["from"] == JID(ROOM + "/Alice")

        # History on join for the third user.
        _, _, _, history = await muc_c.join_muc_wait(ROOM, "Carol", maxstanzas=5, timeout=TIMEOUT)
        assert [m["body"] for m in history] == ["hello team"]

        # Members-only: once set, a user without membership is refused.
        muc_c.leave_muc(ROOM, "Carol")
        form = await muc_a.get_room_config(ROOM, timeout=TIMEOUT)
        form.get_fields()["muc#roomconfig_membersonly"]["value"] = True
        await muc_a.set_room_config(ROOM, form, timeout=TIMEOUT)
        with pytest.raises(PresenceError) as refused:
            await muc_c.join_muc_wait(ROOM, "Carol", maxstanzas=0, timeout=TIMEOUT)
        assert refused.value.condition == "registration-required"
        await muc_a.set_affiliation(ROOM, "member", jid=JID("carol@localhost"), timeout=TIMEOUT)
        await muc_c.join_muc_wait(ROOM, "Carol", maxstanzas=0, timeout=TIMEOUT)
        members = await muc_a.get_affiliation_list(ROOM, "member", timeout=TIMEOUT)
        assert [str(j) for j in members] == ["carol@localhost"]
        for c in (alice, bob, carol):
            await c.close()

    run(go())


def test_archive_retrieval(server):
    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0313", "xep_0059"))
        bob = await connected(server, "bob@localhost/b", "bob")
        for i in range(3):
            alice.send_message(mto="bob@localhost", mbody=f"note {i}", mtype="chat")
            await bob.next_message()
        bob.send_message(mto="alice@localhost/a", mbody="thanks", mtype="chat")
        await alice.next_message()
        result = await alice["xep_0313"].retrieve(with_jid=JID("bob@localhost"), timeout=TIMEOUT)
        bodies = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in result["mam"]["results"]]
        assert bodies == ["note 0", "note 1", "note 2", "thanks"]
        assert result["mam_fin"].xml.get("complete") == "true"
        await alice.close()
        await bob.close()

    run(go())
