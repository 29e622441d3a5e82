"""A bridge built on mautrix (PyPI), the framework of the mautrix bridges,
driving a homeserver through the Application Service API.

Usage:
  python mautrix_bridge.py first  HS_URL SERVER_NAME REGISTRATION ALICE_TOKEN STATE N
  python mautrix_bridge.py second HS_URL SERVER_NAME REGISTRATION ALICE_TOKEN STATE N

`first`: the bot is registered, the homeserver pings the bridge, a puppet is
registered, invited by alice (a normal user) into her room and joins; it
masquerades (whoami, a message, a display name); alice's message, typing and
read receipt reach the bridge in transactions; an alias query is answered by
creating the room. Then the bridge closes its HTTP server, alice sends N
messages while it is down, and the process exits.
`second`: a new process on the same port must receive those N messages, in
order, each once, and nothing it had already received before.

Prints `ok: ...` per step and a final `P passed, F failed`; exits 0 when all
passed. STATE is a JSON file the first run writes for the second.
"""

import asyncio
import json
import logging
import sys
import time
from urllib.parse import urlparse

import aiohttp
from mautrix.appservice import AppService
from mautrix.api import Method, Path
from mautrix.client import ClientAPI
from mautrix.types import (
    EventType,
    LoginType,
    PresenceState,
    Membership,
    MessageEvent,
    ReceiptEvent,
    RoomCreatePreset,
    StateEvent,
    TypingEvent,
)

PASSED = 0


def check(cond, what):
    global PASSED
    if not cond:
        print(f"FAILED: {what}", flush=True)
        print(f"{PASSED} passed, 1 failed", flush=True)
        sys.exit(1)
    PASSED += 1
    print(f"ok: {what}", flush=True)


def read_registration(path):
    """The top-level scalars of a registration file (all a bridge needs here)."""
    out = {}
    with open(path) as f:
        for line in f:
            if line[:1] in (" ", "-", "#", "\n") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip().strip("'\"")
    return out


async def wait_for(cond, what, limit=20.0, seen=None):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            detail = f"; got: {[e.serialize() for e in seen]}" if seen is not None else ""
            check(False, f"{what} (timed out after {limit:.0f} s){detail}")
        await asyncio.sleep(0.05)


class Bridge:
    def __init__(self, hs_url, server, reg):
        self.server = server
        self.reg = reg
        self.port = urlparse(reg["url"]).port
        self.events = []
        self.ephemeral = []
        self.alias_rooms = {}
        self.az = AppService(
            server=hs_url,
            domain=server,
            as_token=reg["as_token"],
            hs_token=reg["hs_token"],
            bot_localpart=reg["sender_localpart"],
            id=reg["id"],
            query_alias=self.query_alias,
            ephemeral_events=True,
        )
        self.az.matrix_event_handler(self.on_event)

    async def on_event(self, evt):
        if evt.type.is_ephemeral:
            self.ephemeral.append(evt)
        else:
            self.events.append(evt)

    async def query_alias(self, alias):
        # A bridge creates portal rooms on demand: `#mautrix_<name>:server`.
        localpart = alias[1:].split(":", 1)[0]
        room_id = await self.az.intent.create_room(
            alias_localpart=localpart, name=f"portal {localpart}", preset=RoomCreatePreset.PUBLIC
        )
        self.alias_rooms[alias] = room_id
        # mautrix answers 404 to an empty (falsy) answer; the body is not read.
        return {"room_id": room_id}

    async def start(self):
        await self.az.start(host="127.0.0.1", port=self.port)
        self.az.ready = True

    def puppet(self, localpart):
        return self.az.intent.user(f"@{localpart}:{self.server}")

    def messages(self, room_id):
        return [
            e
            for e in self.events
            if isinstance(e, MessageEvent) and e.type == EventType.ROOM_MESSAGE and e.room_id == room_id
        ]


async def first(hs_url, server, reg, alice_token, state_path, n):
    bridge = Bridge(hs_url, server, reg)
    await bridge.start()
    bot = bridge.az.intent
    alice = ClientAPI(base_url=hs_url, token=alice_token)
    try:
        await bot.ensure_registered()
        who = await bot.whoami()
        check(who.user_id == f"@{reg['sender_localpart']}:{server}", f"the bot is registered and whoami names it ({who.user_id})")
        took = await bridge.az.ping_self("mautrix-ping-1")
        check(isinstance(took, int), f"the homeserver pings the bridge (ping_self: {took} ms)")
        versions = await bot.versions(no_cache=True)
        check(len(versions.versions) > 0, f"/versions answers (newest {max(versions.versions)})")

        me = await alice.whoami()
        alice_id = me.user_id
        alice.mxid = alice_id
        room_id = await alice.create_room(name="mautrix bridged room")
        check(room_id.startswith("!"), f"alice creates a room ({room_id})")

        puppet = bridge.puppet(f"{reg['puppet_prefix']}alice")
        await puppet.ensure_registered()
        pwho = await puppet.whoami()
        check(pwho.user_id == puppet.mxid, f"the puppet is registered and masquerades (whoami: {pwho.user_id})")
        await puppet.set_displayname("Puppet Alice (bridged)")
        name = await alice.get_displayname(puppet.mxid)
        check(name == "Puppet Alice (bridged)", f"the puppet sets its display name ({name})")

        await puppet.set_presence(PresenceState.ONLINE, ignore_cache=True)
        check(True, "the puppet sets its presence")
        mxc = await puppet.upload_media(b"\x89PNG fake avatar bytes", mime_type="image/png", filename="avatar.png")
        await puppet.set_avatar_url(mxc)
        profile = await alice.get_profile(puppet.mxid)
        check(profile.avatar_url == mxc, f"the puppet uploads an avatar and sets it ({mxc})")

        # What bridges with end-to-bridge encryption do: log in as a namespaced
        # user with the as_token (m.login.application_service), on a chosen device.
        login_api = ClientAPI(base_url=hs_url, token=reg["as_token"])
        flows = await login_api.get_login_flows()
        check(flows.supports_type(LoginType.APPSERVICE), "/login offers m.login.application_service")
        resp = await login_api.login(
            identifier=puppet.mxid,
            login_type=LoginType.APPSERVICE,
            device_id="MAUTRIXDEV1",
            device_name="mautrix bridge",
            store_access_token=False,
        )
        check(resp.user_id == puppet.mxid and resp.device_id == "MAUTRIXDEV1", f"the bridge logs the puppet in with the as_token on its device ({resp.device_id})")
        device_api = ClientAPI(base_url=hs_url, token=resp.access_token)
        dwho = await device_api.whoami()
        check(dwho.device_id == "MAUTRIXDEV1", f"whoami with that token names the device ({dwho.device_id})")
        await device_api.api.session.close()
        await login_api.api.session.close()

        await alice.invite_user(room_id, puppet.mxid)
        await wait_for(
            lambda: any(
                isinstance(e, StateEvent)
                and e.type == EventType.ROOM_MEMBER
                and e.state_key == puppet.mxid
                and e.content.membership == Membership.INVITE
                for e in bridge.events
            ),
            "the puppet's invite reaches the bridge",
        )
        check(True, "the puppet's invite reaches the bridge in a transaction")
        invite = next(e for e in bridge.events if isinstance(e, StateEvent) and e.state_key == puppet.mxid)
        stripped = [ev.type.t for ev in (invite.unsigned.invite_room_state or [])]
        check("m.room.name" in stripped, f"the invite carries the room's stripped state ({stripped})")
        await puppet.ensure_joined(room_id)
        members = await puppet.get_joined_members(room_id)
        check(puppet.mxid in members and alice_id in members, f"the puppet joins alice's room ({sorted(members)})")
        await wait_for(
            lambda: any(
                isinstance(e, StateEvent) and e.state_key == puppet.mxid and e.content.membership == Membership.JOIN
                for e in bridge.events
            ),
            "the puppet's join reaches the bridge",
        )
        join = next(
            e for e in bridge.events
            if isinstance(e, StateEvent) and e.state_key == puppet.mxid and e.content.membership == Membership.JOIN
        )
        prev = join.prev_content.membership if join.prev_content else None
        check(prev == Membership.INVITE, f"the join's prev_content says it was an invite ({prev})")
        # The intent's own get_joined_members would join the bot first: ask directly.
        raw = await bot.api.request(Method.GET, Path.v3.rooms[room_id].joined_members)
        check(puppet.mxid in raw.get("joined", {}), "the bot, not in the room, lists the members of a room its puppet is in")

        sent = await puppet.send_text(room_id, "hello from the bridged side")
        got = await alice.get_event(room_id, sent)
        check(got.sender == puppet.mxid, f"the puppet's message is sent as the puppet ({got.sender})")
        check(got.content.body == "hello from the bridged side", "alice reads the puppet's message")

        old_ts = 1600000000000
        past = await puppet.send_text(room_id, "bridged from the past", timestamp=old_ts)
        got = await alice.get_event(room_id, past)
        check(got.timestamp == old_ts, f"timestamp massaging (?ts=) sets origin_server_ts ({got.timestamp})")
        joined = await bot.get_joined_rooms()
        check(isinstance(joined, list), f"the bot lists its joined rooms ({len(joined)})")

        mine = await alice.send_text(room_id, "hello bridge, from alice")
        await wait_for(lambda: any(e.event_id == mine for e in bridge.messages(room_id)), "alice's message reaches the bridge")
        evt = next(e for e in bridge.messages(room_id) if e.event_id == mine)
        check(evt.sender == alice_id and evt.content.body == "hello bridge, from alice", "alice's message reaches the bridge's event handler")

        await alice.set_typing(room_id, timeout=10000)
        await wait_for(
            lambda: any(isinstance(e, TypingEvent) and e.room_id == room_id and alice_id in e.content.user_ids for e in bridge.ephemeral),
            "alice's typing reaches the bridge",
        )
        check(True, "alice's typing reaches the bridge as an ephemeral event")
        await alice.send_receipt(room_id, sent)
        await wait_for(
            lambda: any(
                isinstance(e, ReceiptEvent) and e.room_id == room_id
                and alice_id in e.serialize()["content"].get(sent, {}).get("m.read", {})
                for e in bridge.ephemeral
            ),
            "alice's read receipt reaches the bridge",
            seen=bridge.ephemeral,
        )
        check(True, "alice's read receipt of the puppet's message reaches the bridge as an ephemeral event")

        alias = f"#{reg['alias_prefix']}lobby:{server}"
        info = await alice.resolve_room_alias(alias)
        check(alias in bridge.alias_rooms, "the homeserver asks the bridge about the unknown alias (query_alias)")
        check(info.room_id == bridge.alias_rooms[alias], f"the alias resolves to the room the bridge created ({info.room_id})")
        await alice.join_room(alias, max_retries=0)
        check(True, "alice joins the portal room by its alias")

        # Down: the bridge closes its HTTP server; alice keeps talking.
        await bridge.az.runner.cleanup()
        check(True, "the bridge closes its HTTP server")
        ids = []
        for i in range(n):
            ids.append(await alice.send_text(room_id, f"missed {i}"))
        check(len(ids) == n, f"alice sends {n} messages while the bridge is down")
        # Give the homeserver time to fail at least once.
        await asyncio.sleep(2)
        seen = [e.event_id for e in bridge.events]
        check(not any(i in seen for i in ids), "nothing sent while down reached the closed bridge")
        with open(state_path, "w") as f:
            json.dump({"room_id": room_id, "missed": ids, "seen": seen, "alice": alice_id}, f)
    finally:
        await alice.api.session.close()
        await bridge.az.stop()


async def second(hs_url, server, reg, alice_token, state_path, n):
    with open(state_path) as f:
        st = json.load(f)
    bridge = Bridge(hs_url, server, reg)
    started = time.monotonic()
    await bridge.start()
    alice = ClientAPI(base_url=hs_url, token=alice_token)
    try:
        check(True, "the bridge is back on its port (a new process)")
        # A bridge at start-up shows life to the homeserver, which ends its backoff.
        await bridge.az.intent.ensure_registered()
        await bridge.az.intent.whoami()
        room_id, missed = st["room_id"], st["missed"]
        await wait_for(lambda: sum(1 for e in bridge.messages(room_id) if e.event_id in missed) >= len(missed), f"the {n} missed messages", limit=60)
        took = time.monotonic() - started
        got = [e.event_id for e in bridge.messages(room_id) if e.event_id in missed]
        check(got == missed, f"every missed message arrives, in order ({len(got)} in {took:.1f} s)")
        bodies = [e.content.body for e in bridge.messages(room_id) if e.event_id in missed]
        check(bodies == [f"missed {i}" for i in range(n)], "their bodies are alice's, in order")
        # Anything still in flight would arrive now.
        last = await alice.send_text(room_id, "after the restart")
        await wait_for(lambda: any(e.event_id == last for e in bridge.events), "a new message after the restart")
        await asyncio.sleep(1)
        all_ids = [e.event_id for e in bridge.events]
        check(len(all_ids) == len(set(all_ids)), f"no event arrives twice ({len(all_ids)} events)")
        again = [i for i in all_ids if i in st["seen"]]
        check(not again, f"nothing delivered before the restart is delivered again ({again})")
    finally:
        await alice.api.session.close()
        await bridge.az.stop()


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    phase, hs_url, server, reg_path, alice_token, state_path, n = sys.argv[1:8]
    reg = read_registration(reg_path)
    # The namespaces the test registers: `@<id>_.*` users, `#<id>_.*` aliases.
    reg["puppet_prefix"] = f"{reg['id']}_"
    reg["alias_prefix"] = f"{reg['id']}_"
    run = first if phase == "first" else second
    asyncio.run(run(hs_url, server, reg, alice_token, state_path, int(n)))
    print(f"{PASSED} passed, 0 failed", flush=True)


if __name__ == "__main__":
    main()
