"""A bridge built on mautrix-python's appservice framework, run against Warren.

Driven by tests/tests/it/appservice.rs, which starts two nodes (A holds the
registration, B is another node), then runs this script with:
  HS_A, DOMAIN_A, HS_B, DOMAIN_B   the nodes' client API URLs and server names
  AS_PORT, AS_TOKEN, HS_TOKEN, AS_ID  what the registration file says
It exits 0 when every check passed and prints one line per step.
"""

import asyncio
import json
import os
import sys
import time

import aiohttp
import aiohttp.web
from mautrix.appservice import AppService
from mautrix.appservice.state_store.memory import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.client import ClientAPI
from mautrix.api import HTTPAPI
from mautrix.types import EventType, PaginationDirection

WAIT = 60.0

env = os.environ
HS_A, DOMAIN_A = env["HS_A"], env["DOMAIN_A"]
HS_B, DOMAIN_B = env["HS_B"], env["DOMAIN_B"]
PORT = int(env["AS_PORT"])


def step(msg):
    print(f"ok: {msg}", flush=True)


class MemoryStore(MemoryStateStore, ASStateStore):
    """The appservice's state in memory (the default store writes a file)."""

    def __init__(self):
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


async def wait_for(what, cond, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def register_user(session, hs, localpart):
    """An ordinary user, with the dummy stage (registration is open on loopback)."""
    body = {"username": localpart, "password": "secret-pass", "auth": {"type": "m.login.dummy"}}
    async with session.post(f"{hs}/_matrix/client/v3/register", json=body) as r:
        data = await r.json()
        assert r.status == 200, (r.status, data)
    api = HTTPAPI(base_url=hs, token=data["access_token"], client_session=session)
    return ClientAPI(data["user_id"], api=api)


async def bodies(client, room_id):
    resp = await client.get_messages(room_id, PaginationDirection.BACKWARD, limit=50)
    return [getattr(e.content, "body", None) for e in resp.events if e.type == EventType.ROOM_MESSAGE]


class Recorder:
    """Every transaction the appservice handled, with the event ids each carried."""

    def __init__(self, appservice):
        self.txns = []  # (txn_id, [event ids])
        self.events = []  # every room event, in arrival order
        self.ephemeral = []
        inner = appservice.handle_transaction

        async def recording(txn_id, *, events, **kwargs):
            self.txns.append((txn_id, [e.get("event_id") for e in events]))
            self.events.extend(events)
            self.ephemeral.extend(kwargs.get("ephemeral") or [])
            return await inner(txn_id, events=events, **kwargs)

        appservice.handle_transaction = recording

    def message_bodies(self, room_id):
        return [
            e["content"].get("body")
            for e in self.events
            if e.get("room_id") == room_id and e.get("type") == "m.room.message"
        ]

    def assert_each_event_once(self):
        seen = {}
        for txn, ids in self.txns:
            for i in ids:
                assert i not in seen, f"{i} came in transaction {seen[i]} and again in {txn}"
                seen[i] = txn


async def main():
    queried_aliases = []

    async def query_alias(alias):
        # Create the room the alias names, as a bridge does for a portal.
        queried_aliases.append(alias)
        localpart = alias[1:].split(":")[0]
        room = await appservice.intent.create_room(alias_localpart=localpart, name="Portal")
        return {"room_id": room}

    async def query_user(user_id):
        await appservice.intent.user(user_id).ensure_registered()
        # mautrix answers 404 for an empty (falsy) result.
        return {"user_id": user_id}

    appservice = AppService(
        server=HS_A,
        domain=DOMAIN_A,
        as_token=env["AS_TOKEN"],
        hs_token=env["HS_TOKEN"],
        bot_localpart="bridgebot",
        id=env["AS_ID"],
        state_store=MemoryStore(),
        ephemeral_events=True,
        query_alias=query_alias,
        query_user=query_user,
    )
    rec = Recorder(appservice)
    await appservice.start("127.0.0.1", PORT)
    session = aiohttp.ClientSession()
    try:
        await scenario(appservice, rec, session, queried_aliases)
    finally:
        await session.close()
        await appservice.stop()


async def scenario(appservice, rec, session, queried_aliases):
    bot = appservice.intent
    took = await appservice.ping_self("ping-1")
    assert isinstance(took, int), took
    step(f"the node reaches the appservice (ping, {took} ms)")

    whoami = await bot.whoami()
    assert whoami.user_id == f"@bridgebot:{DOMAIN_A}", whoami
    step("the as_token acts as the sender user")

    puppet = bot.user(f"@bridge_alice:{DOMAIN_A}")
    await puppet.ensure_registered()
    assert (await puppet.whoami()).user_id == f"@bridge_alice:{DOMAIN_A}"
    step("a puppet registers with m.login.application_service and is masqueraded as")

    async with session.post(
        f"{HS_A}/_matrix/client/v3/register",
        json={"username": "bridge_mallory", "password": "pw", "auth": {"type": "m.login.dummy"}},
    ) as r:
        data = await r.json()
        assert r.status == 400 and data["errcode"] == "M_EXCLUSIVE", (r.status, data)
    step("an ordinary user cannot register inside the exclusive namespace")

    bob = await register_user(session, HS_A, "bob")
    carol = await register_user(session, HS_B, "carol")

    room = await puppet.create_room(name="Bridged", invitees=[bob.mxid, carol.mxid])
    await bob.join_room(room)
    await carol.join_room(room, servers=[DOMAIN_A])
    step("the puppet creates a room; a user of this node and a user of another node join")

    then = int(time.time() * 1000) - 3_600_000
    sent = await puppet.send_text(room, "hello from the bridged network", timestamp=then)
    event = await bob.get_event(room, sent)
    assert event.timestamp == then, (event.timestamp, then)
    await wait_for("carol sees the puppet", lambda: _has(carol, room, "hello from the bridged network"))
    step("bridge to Matrix: the puppet's message (with its original ts) reaches both nodes")

    await bob.send_text(room, "hi puppet, from bob")
    await carol.send_text(room, "hi puppet, from carol on another node")
    await wait_for(
        "both messages at the appservice",
        lambda: {"hi puppet, from bob", "hi puppet, from carol on another node"}
        <= set(rec.message_bodies(room)),
    )
    step("Matrix to bridge: messages of both nodes' users arrive in transactions")

    await bob.set_typing(room, timeout=10_000)
    await wait_for(
        "typing at the appservice",
        lambda: any(
            e.get("type") == "m.typing"
            and e.get("room_id") == room
            and bob.mxid in e["content"].get("user_ids", [])
            for e in rec.ephemeral
        ),
    )
    await bob.send_receipt(room, sent)
    await wait_for(
        "a receipt at the appservice",
        lambda: any(
            e.get("type") == "m.receipt"
            and e.get("room_id") == room
            and bob.mxid in e["content"].get(sent, {}).get("m.read", {})
            for e in rec.ephemeral
        ),
    )
    step("typing and read receipts arrive as ephemeral events")

    # Down for a while: every transaction it missed comes afterwards, in order, once.
    await appservice.runner.cleanup()
    missed = [f"while you were away {i}" for i in range(8)]
    for text in missed:
        await bob.send_text(room, text)
    await asyncio.sleep(1.5)  # the node tries and fails in the meantime
    await appservice.runner.setup()
    site = aiohttp.web.TCPSite(appservice.runner, "127.0.0.1", PORT)
    await site.start()
    await wait_for(
        "the missed messages",
        lambda: all(t in rec.message_bodies(room) for t in missed),
        timeout=90,
    )
    got = [b for b in rec.message_bodies(room) if b in missed]
    assert got == missed, f"out of order or repeated: {got}"
    rec.assert_each_event_once()
    step("after an outage every missed event arrives, in order, once")

    async with session.put(
        f"{HS_A}/_matrix/client/v3/directory/room/%23bridge_taken%3A{DOMAIN_A}",
        json={"room_id": room},
        headers={"Authorization": f"Bearer {bob.api.token}"},
    ) as r:
        data = await r.json()
        assert r.status == 400 and data["errcode"] == "M_EXCLUSIVE", (r.status, data)
    step("an ordinary user cannot create an alias in the exclusive alias namespace")

    info = await bob.resolve_room_alias(f"#bridge_lobby:{DOMAIN_A}")
    assert queried_aliases == [f"#bridge_lobby:{DOMAIN_A}"], queried_aliases
    assert info.room_id.startswith("!"), info
    step("an unknown alias in the namespace is created by the appservice when asked")

    profile = await carol.get_profile(f"@bridge_zed:{DOMAIN_A}")
    assert profile is not None
    step("an unknown user in the namespace is created by the appservice when asked (from node B)")
    print("ALL OK", flush=True)


async def _has(client, room, text):
    try:
        return text in await bodies(client, room)
    except Exception:
        return False


if __name__ == "__main__":
    asyncio.run(main())
