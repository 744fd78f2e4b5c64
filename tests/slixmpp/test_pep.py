"""Personal Eventing Protocol (XEP-0163) with slixmpp's own plugins on the client side: User
Avatar (XEP-0084) notifications filtered by entity capabilities (XEP-0115) and the last item
on coming online, PEP Native Bookmarks (XEP-0402) stored privately through XEP-0223,
publish-options as preconditions on an OMEMO-style device list (XEP-0060 §7.1.5), vCard-based
avatars (XEP-0153) in presence, and service discovery of an account's nodes."""

import asyncio
import base64
import hashlib
from xml.etree import ElementTree as ET

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004.stanza import Form
from slixmpp.plugins.xep_0060.stanza import EventItem, Item
from slixmpp.stanza import Iq
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from conftest import TIMEOUT, Client, connected, run

DISCO_INFO = "http://jabber.org/protocol/disco#info"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
BOOKMARKS = "urn:xmpp:bookmarks:1"
AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICELIST = f"{AXOLOTL}.devicelist"
# A 1×1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGA"
    "WjR9awAAAABJRU5ErkJggg=="
)


class Conference(ElementBase):
    """A XEP-0402 bookmark (slixmpp 1.8 has no plugin for it): the item id is the room."""

    name = "conference"
    namespace = BOOKMARKS
    plugin_attrib = "conference"
    interfaces = {"name", "autojoin", "nick"}
    sub_interfaces = {"nick"}


register_stanza_plugin(Item, Conference)
register_stanza_plugin(EventItem, Conference)


class DeviceList(ElementBase):
    """The device list Conversations publishes for OMEMO (legacy namespace)."""

    name = "list"
    namespace = AXOLOTL
    plugin_attrib = "axolotl_list"
    interfaces = set()

    def add_device(self, device_id):
        ET.SubElement(self.xml, f"{{{AXOLOTL}}}device", id=str(device_id))

    def devices(self):
        return [d.get("id") for d in self.xml.findall(f"{{{AXOLOTL}}}device")]


async def wait_for(predicate, what):
    for _ in range(int(TIMEOUT / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def ping(client):
    """A round trip to the server: what the client sent before has been processed."""
    await asyncio.wait_for(client["xep_0199"].ping(jid="localhost"), TIMEOUT)


async def quiet(queue, what, seconds=0.5):
    try:
        got = await asyncio.wait_for(queue.get(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected {what}: {got}")


class Caps:
    """What the server learnt of our clients' capabilities. It asks one client per
    verification string (XEP-0115 §6.2, disco#info of node#ver) and keeps the answer, so a
    notification can be expected only once an answer for the client's hash has reached it."""

    def __init__(self, server):
        self.domain = server.domain
        self.asked = []
        self.answered = {}

    def _event(self, ver):
        return self.answered.setdefault(ver, asyncio.Event())

    def watch(self, client):
        node = client["xep_0115"].caps_node + "#"

        def question(stanza):
            query = stanza.xml.find(f"{{{DISCO_INFO}}}query")
            if (
                isinstance(stanza, Iq)
                and stanza["type"] == "get"
                and str(stanza["from"]) == self.domain
                and query is not None
                and query.get("node", "").startswith(node)
            ):
                self.asked.append((str(stanza["to"]), query.get("node")[len(node) :]))
            return stanza

        def answer(stanza):
            query = stanza.xml.find(f"{{{DISCO_INFO}}}query")
            if (
                isinstance(stanza, Iq)
                and stanza["type"] == "result"
                and str(stanza["to"]) == self.domain
                and query is not None
                and query.get("node", "").startswith(node)
            ):
                ver = query.get("node")[len(node) :]

                async def processed():
                    # Queued after the answer: its reply means the server has the answer.
                    await ping(client)
                    self._event(ver).set()

                asyncio.ensure_future(processed())
            return stanza

        client.add_filter("in", question)
        client.add_filter("out", answer)

    async def learnt(self, client):
        ver = await client["xep_0115"].get_verstring()
        assert ver, "no capabilities hash"
        try:
            await asyncio.wait_for(self._event(ver).wait(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"the server never asked about {ver}: {self.asked}") from None
        return ver


async def pep_client(server, caps, jid, password, plugins=(), pep=()):
    """A client announcing entity capabilities whose features include `<node>+notify` for the
    nodes its plugins care about (xep_0084: avatar metadata) and for each (event name,
    payload class) in `pep`; returns once it is online and the server has its answer about
    the hash."""
    c = Client(server, jid, password, plugins=("xep_0115", "xep_0163", *plugins))
    caps.watch(c)
    for event, stanza in pep:
        c.add_event_handler(
            "session_bind", lambda _, e=event, s=stanza: c["xep_0163"].register_pep(e, s)
        )
    assert await c.login(), f"{jid} could not log in"
    # The hash of every feature added at bind time, before the first presence carries it.
    await asyncio.wait_for(c["xep_0115"].update_caps(broadcast=False), TIMEOUT)
    await asyncio.wait_for(c.get_roster(), TIMEOUT)
    c.send_presence()
    await caps.learnt(c)
    return c


async def befriend(a, b):
    """A mutual presence subscription between two connected clients."""
    for c in (a, b):
        c.auto_authorize = True
        c.auto_subscribe = True
    a.send_presence_subscription(pto=b.boundjid.bare)
    await wait_for(
        lambda: a.client_roster[b.boundjid.bare]["subscription"] == "both",
        f"{a.boundjid.bare}'s subscription both",
    )
    await wait_for(
        lambda: b.client_roster[a.boundjid.bare]["subscription"] == "both",
        f"{b.boundjid.bare}'s subscription both",
    )


def queue_of(client, event):
    q = asyncio.Queue()
    client.add_event_handler(event, q.put_nowait)
    return q


async def next_of(queue, what):
    try:
        return await asyncio.wait_for(queue.get(), TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def options_form(form_type, **fields):
    """A submitted form (publish-options or node_config) of pubsub# fields."""
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def pubsub_error(err):
    """The condition and the pubsub#errors condition of an error reply."""
    ns = f"{{{PUBSUB_ERRORS}}}"
    app = [c.tag[len(ns) :] for c in err.iq.xml.iter() if c.tag.startswith(ns)]
    return err.iq["error"]["condition"], app


def metadata_ids(msg):
    item = msg["pubsub_event"]["items"]["item"]
    return item["id"], [i["id"] for i in item["avatar_metadata"]["items"]]


def test_user_avatar_notifies_contacts_that_want_it(server):
    """alice publishes her avatar with xep_0084; bob, whose caps carry
    urn:xmpp:avatar:metadata+notify, gets the metadata and fetches the data; carol, with the
    same caps but no subscription, hears nothing; bob's second resource gets the last
    metadata item when it comes online, without being asked for the hash again."""

    async def go():
        caps = Caps(server)
        alice = await pep_client(server, caps, "alice@localhost/a", "alice", plugins=("xep_0084",))
        bob = await pep_client(server, caps, "bob@localhost/b", "bob", plugins=("xep_0084",))
        carol = await pep_client(server, caps, "carol@localhost/c", "carol", plugins=("xep_0084",))
        await befriend(alice, bob)
        bob_meta = queue_of(bob, "avatar_metadata_publish")
        bob_data = queue_of(bob, "avatar_data_publish")
        carol_meta = queue_of(carol, "avatar_metadata_publish")

        avatar = alice["xep_0084"]
        avatar_id = avatar.generate_id(PNG)
        assert avatar_id == hashlib.sha1(PNG).hexdigest()
        await asyncio.wait_for(avatar.publish_avatar(PNG), TIMEOUT)
        metadata = {"id": avatar_id, "type": "image/png", "bytes": len(PNG)}
        # slixmpp 1.8 writes width and height into the XML as given: they go as strings.
        metadata.update(width="1", height="1")
        await asyncio.wait_for(avatar.publish_avatar_metadata(metadata), TIMEOUT)

        msg = await next_of(bob_meta, "the avatar metadata notification at bob")
        assert str(msg["from"]) == "alice@localhost"
        assert msg["pubsub_event"]["items"]["node"] == AVATAR_METADATA
        assert metadata_ids(msg) == (avatar_id, [avatar_id]), str(msg)
        info = msg["pubsub_event"]["items"]["item"]["avatar_metadata"]["items"][0]
        assert (info["type"], info["bytes"]) == ("image/png", len(PNG))
        got = await asyncio.wait_for(
            bob["xep_0084"].retrieve_avatar("alice@localhost", avatar_id), TIMEOUT
        )
        assert got["pubsub"]["items"]["node"] == AVATAR_DATA
        item = got["pubsub"]["items"]["item"]
        assert item["id"] == avatar_id
        assert item["avatar_data"]["value"] == PNG
        # Nobody asked for the data node's notifications, nor may carol see alice's nodes.
        await ping(bob)
        await ping(carol)
        await quiet(bob_data, "avatar data notification")
        await quiet(carol_meta, "notification to a stranger")

        second = Client(server, "bob@localhost/b2", "bob", plugins=("xep_0115", "xep_0084"))
        caps.watch(second)
        last = queue_of(second, "avatar_metadata_publish")
        assert await second.login(), "bob's second resource could not log in"
        await asyncio.wait_for(second["xep_0115"].update_caps(broadcast=False), TIMEOUT)
        assert await second["xep_0115"].get_verstring() == await bob["xep_0115"].get_verstring()
        await asyncio.wait_for(second.get_roster(), TIMEOUT)
        second.send_presence()
        msg = await next_of(last, "the last metadata item at bob's second resource")
        assert metadata_ids(msg) == (avatar_id, [avatar_id]), str(msg)
        # The same plugins, the same hash: the server asked one client about it, once.
        assert len(caps.asked) == 1, caps.asked
        for c in (alice, bob, carol, second):
            await c.close()

    run(go())


def test_bookmarks_stay_private_and_reach_the_owners_other_resources(server):
    """Two XEP-0402 bookmarks stored through xep_0223 with the publish-options XEP-0402 asks
    for: alice's desk (caps with urn:xmpp:bookmarks:1+notify) hears of each, a retrieval
    returns both, bob is refused with not-allowed, and with send_last_published_item=never a
    resource that comes online later gets nothing."""

    async def go():
        caps = Caps(server)
        phone = await pep_client(
            server, caps, "alice@localhost/phone", "alice", plugins=("xep_0223",)
        )
        desk = await pep_client(
            server, caps, "alice@localhost/desk", "alice", pep=[("bookmarks", Conference)]
        )
        bob = await pep_client(
            server, caps, "bob@localhost/b", "bob", pep=[("bookmarks", Conference)]
        )
        await befriend(phone, bob)
        notified = queue_of(desk, "bookmarks_publish")
        bob_notified = queue_of(bob, "bookmarks_publish")

        rooms = {
            "tea@muc.localhost": ("Tea party", "true", "alice"),
            "croquet@muc.localhost": ("Croquet", "false", "al"),
        }
        for room, (name, autojoin, nick) in rooms.items():
            bookmark = Conference()
            bookmark["name"], bookmark["autojoin"], bookmark["nick"] = name, autojoin, nick
            # xep_0223 adds persist_items and access_model=whitelist to these.
            options = options_form(
                PUBLISH_OPTIONS, max_items="max", send_last_published_item="never"
            )
            await asyncio.wait_for(
                phone["xep_0223"].store(bookmark, node=BOOKMARKS, id=room, options=options),
                TIMEOUT,
            )
            msg = await next_of(notified, f"the notification of {room} at alice's desk")
            item = msg["pubsub_event"]["items"]["item"]
            assert item["id"] == room, str(msg)
            conf = item["conference"]
            assert (conf["name"], conf["autojoin"], conf["nick"]) == (name, autojoin, nick)

        result = await asyncio.wait_for(phone["xep_0223"].retrieve(BOOKMARKS), TIMEOUT)
        stored = {i["id"]: i["conference"]["name"] for i in result["pubsub"]["items"]}
        assert stored == {room: v[0] for room, v in rooms.items()}, str(result)

        with pytest.raises(IqError) as refused:
            await bob["xep_0060"].get_items("alice@localhost", BOOKMARKS, timeout=TIMEOUT)
        assert pubsub_error(refused.value) == ("not-allowed", ["closed-node"])
        await ping(bob)
        await quiet(bob_notified, "notification of a whitelist node to a contact")

        later = await pep_client(
            server, caps, "alice@localhost/later", "alice", pep=[("bookmarks", Conference)]
        )
        late = queue_of(later, "bookmarks_publish")
        await ping(later)
        await quiet(late, "last item of a node with send_last_published_item=never")
        for c in (phone, desk, bob, later):
            await c.close()

    run(go())


def test_publish_options_are_preconditions(server):
    """An OMEMO device list published with access_model=open (as Conversations does) is
    readable by a stranger; publishing with options the node does not have fails with
    conflict and precondition-not-met; once alice reconfigures the node they hold."""

    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0060",))
        carol = await connected(server, "carol@localhost/c", "carol", plugins=("xep_0060",))
        pubsub = alice["xep_0060"]

        def device_list(*ids):
            devices = DeviceList()
            for i in ids:
                devices.add_device(i)
            return devices.xml

        async def publish(payload, **options):
            return await pubsub.publish(
                None,
                DEVICELIST,
                id="current",
                payload=payload,
                options=options_form(PUBLISH_OPTIONS, **options),
                timeout=TIMEOUT,
            )

        await publish(device_list(1234), access_model="open")
        got = await carol["xep_0060"].get_items("alice@localhost", DEVICELIST, timeout=TIMEOUT)
        items = list(got["pubsub"]["items"])
        assert [i["id"] for i in items] == ["current"], str(got)
        assert DeviceList(xml=items[0]["payload"]).devices() == ["1234"]

        with pytest.raises(IqError) as refused:
            await publish(device_list(1234, 5678), access_model="whitelist")
        assert pubsub_error(refused.value) == ("conflict", ["precondition-not-met"])
        got = await carol["xep_0060"].get_items("alice@localhost", DEVICELIST, timeout=TIMEOUT)
        assert DeviceList(xml=got["pubsub"]["items"]["item"]["payload"]).devices() == ["1234"]

        async def access_model():
            config = await pubsub.get_node_config(None, DEVICELIST, timeout=TIMEOUT)
            return config["pubsub_owner"]["configure"]["form"]["values"]["pubsub#access_model"]

        assert await access_model() == "open"
        await pubsub.set_node_config(
            None, DEVICELIST, options_form(NODE_CONFIG, access_model="whitelist"), timeout=TIMEOUT
        )
        assert await access_model() == "whitelist"

        await publish(device_list(1234, 5678), access_model="whitelist")
        mine = await pubsub.get_items(None, DEVICELIST, timeout=TIMEOUT)
        assert DeviceList(xml=mine["pubsub"]["items"]["item"]["payload"]).devices() == [
            "1234",
            "5678",
        ]
        with pytest.raises(IqError) as refused:
            await carol["xep_0060"].get_items("alice@localhost", DEVICELIST, timeout=TIMEOUT)
        assert pubsub_error(refused.value) == ("not-allowed", ["closed-node"])
        await alice.close()
        await carol.close()

    run(go())


def test_vcard_avatar_hash_in_presence(server):
    """alice sets a vCard avatar with xep_0153: bob sees its SHA-1 in her presence, both
    from her client and, for a resource whose client says nothing about avatars, added by
    the server; the vCard holds the same bytes."""

    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0153",))
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0153",))
        await befriend(alice, bob)
        updates = queue_of(bob, "vcard_avatar_update")
        digest = hashlib.sha1(PNG).hexdigest()

        async def next_hash_from(resource):
            while True:
                p = await next_of(updates, f"a photo hash in the presence of {resource}")
                if str(p["from"]) == resource and p["vcard_temp_update"]["photo"]:
                    return p["vcard_temp_update"]["photo"]

        await asyncio.wait_for(
            alice["xep_0153"].set_avatar(avatar=PNG, mtype="image/png"), TIMEOUT
        )
        assert await next_hash_from("alice@localhost/a") == digest

        # No xep_0153 here: its presence has no vcard-temp:x:update, the server adds one.
        plain = await connected(server, "alice@localhost/plain", "alice")
        assert await next_hash_from("alice@localhost/plain") == digest

        vcard = await asyncio.wait_for(
            bob["xep_0054"].get_vcard("alice@localhost", cached=False, local=False), TIMEOUT
        )
        assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PNG
        assert vcard["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
        for c in (alice, plain, bob):
            await c.close()

    run(go())


def test_disco_of_an_account_shows_pep_and_the_readable_nodes(server):
    """disco#info of alice's bare JID has the pubsub/pep identity and the publish-options
    feature; disco#items lists her nodes by who may read them: all for alice, open and
    presence ones for bob (a contact), the open one for carol, never the whitelist one."""

    async def go():
        alice = await connected(server, "alice@localhost/a", "alice", plugins=("xep_0060",))
        bob = await connected(server, "bob@localhost/b", "bob", plugins=("xep_0060",))
        carol = await connected(server, "carol@localhost/c", "carol", plugins=("xep_0060",))
        await befriend(alice, bob)

        info = await bob["xep_0030"].get_info(jid="alice@localhost", timeout=TIMEOUT)
        identities = [i[:2] for i in info["disco_info"]["identities"]]
        assert ("pubsub", "pep") in identities, identities
        assert ("account", "registered") in identities, identities
        assert PUBLISH_OPTIONS in info["disco_info"]["features"]

        nick = ET.Element("{http://jabber.org/protocol/nick}nick")
        nick.text = "Alice"
        private = ET.Element(f"{{{BOOKMARKS}}}conference", name="Tea party")
        for node, payload, access in (
            ("http://jabber.org/protocol/nick", nick, "presence"),
            (DEVICELIST, DeviceList().xml, "open"),
            (BOOKMARKS, private, "whitelist"),
        ):
            await alice["xep_0060"].publish(
                None,
                node,
                id="current",
                payload=payload,
                options=options_form(PUBLISH_OPTIONS, access_model=access),
                timeout=TIMEOUT,
            )

        async def nodes(client):
            items = await client["xep_0060"].get_nodes(jid="alice@localhost", timeout=TIMEOUT)
            found = items["disco_items"]["items"]
            assert all(str(jid) == "alice@localhost" for jid, _, _ in found), found
            return sorted(node for _, node, _ in found)

        assert await nodes(alice) == sorted(
            [BOOKMARKS, DEVICELIST, "http://jabber.org/protocol/nick"]
        )
        assert await nodes(bob) == sorted([DEVICELIST, "http://jabber.org/protocol/nick"])
        assert await nodes(carol) == [DEVICELIST]
        for c in (alice, bob, carol):
            await c.close()

    run(go())
