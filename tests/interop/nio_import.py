"""Encrypted history across `myelin import synapse` (issue #23 §2), with
matrix-nio[e2e] (libolm) clients whose olm accounts and megolm sessions are
kept in files, as a real client keeps them across restarts.

Usage: python nio_import.py before URL STATE_DIR
       python nio_import.py after URL STATE_DIR

before (against Synapse): two users register, Alice makes an encrypted room
  and invites Bob, Bob joins; each sends a message the other's olm decrypts.
  The logins, the room and the event ids go to STATE_DIR/state.json.
after (against Myelin on the imported data): both clients come back with the
  access tokens and device ids Synapse issued and their own key stores; Bob
  pages back through the history Myelin serves and decrypts both messages of
  before with the sessions his device already had, under the same event ids;
  then a new message each way decrypts on the other side (the device keys and
  one-time keys came over too).
Exits 0 when every check passed.
"""

import asyncio
import json
import os
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.store import SqliteStore

from checks import all_passed, check
from nio_e2e import crypto_sync, receive  # the same key upkeep and decrypting wait

MEGOLM = "m.megolm.v1.aes-sha2"


def client(url, store, user="", device=""):
    config = AsyncClientConfig(encryption_enabled=True, store=SqliteStore, store_sync_tokens=False)
    return AsyncClient(url, user, device, store_path=store, config=config)


async def send(c, room_id, text):
    r = await c.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text},
                          ignore_unverified_devices=True)
    check(isinstance(r, RoomSendResponse), f"{c.user_id} sends {text!r} encrypted ({r})")
    return r.event_id


async def before(url, state_dir):
    tag = str(int(time.time() * 1000))[-6:]
    alice = client(url, state_dir)
    bob = client(url, state_dir)
    for c, name in ((alice, f"nioalice{tag}"), (bob, f"niobob{tag}")):
        r = await c.register(name, "nio-pass-1", f"{name} laptop")
        check(isinstance(r, RegisterResponse), f"{name} registers on Synapse ({r})")
        await c.keys_upload()
        await crypto_sync(c, 0)
    r = await alice.room_create(name="Secrets", invite=[bob.user_id],
                                initial_state=[{"type": "m.room.encryption", "state_key": "",
                                                "content": {"algorithm": MEGOLM}}])
    check(isinstance(r, RoomCreateResponse), f"alice creates an encrypted room ({r})")
    room = r.room_id
    await crypto_sync(bob)
    r = await bob.join(room)
    check(isinstance(r, JoinResponse), f"bob joins ({r})")
    await crypto_sync(alice)
    await crypto_sync(bob)
    first = await send(alice, room, "secret before the move")
    got = await receive(bob, room, "secret before the move")
    check(got is not None and got.decrypted, "bob's olm decrypts alice's message on Synapse")
    await crypto_sync(alice)
    second = await send(bob, room, "bob's secret before the move")
    got = await receive(alice, room, "bob's secret before the move")
    check(got is not None and got.decrypted, "alice's olm decrypts bob's message on Synapse")
    state = {"room": room, "events": [first, second],
             "alice": [alice.user_id, alice.device_id, alice.access_token],
             "bob": [bob.user_id, bob.device_id, bob.access_token]}
    for c in (alice, bob):
        await c.close()
    with open(os.path.join(state_dir, "state.json"), "w") as f:
        json.dump(state, f)
    all_passed()


async def after(url, state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        state = json.load(f)
    room = state["room"]
    alice = client(url, state_dir, state["alice"][0], state["alice"][1])
    bob = client(url, state_dir, state["bob"][0], state["bob"][1])
    for c, who in ((alice, "alice"), (bob, "bob")):
        c.restore_login(*state[who])
        r = await crypto_sync(c, 0)
        check(isinstance(r, SyncResponse), f"{who}'s Synapse token and device work on Myelin ({r})")
        check(room in r.rooms.join, f"{who} is in the encrypted room after the move")
    r = await bob.room_messages(room, limit=50)
    check(isinstance(r, RoomMessagesResponse), f"bob pages back through the history ({r})")
    decrypted = {}
    for e in r.chunk:
        if isinstance(e, MegolmEvent):
            try:
                e = bob.decrypt_event(e)
            except EncryptionError as err:
                check(False, f"bob decrypts {e.event_id} with the session his device kept ({err})")
        if isinstance(e, RoomMessageText):
            decrypted[e.event_id] = e.body
    check(decrypted.get(state["events"][0]) == "secret before the move",
          f"alice's message from before the move decrypts for bob under its event id ({decrypted})")
    check(decrypted.get(state["events"][1]) == "bob's secret before the move",
          f"bob's own message from before the move decrypts ({decrypted})")
    await crypto_sync(alice)
    await send(alice, room, "secret after the move")
    got = await receive(bob, room, "secret after the move")
    check(got is not None and got.decrypted, "bob's olm decrypts alice's message sent through Myelin")
    await crypto_sync(alice)
    await send(bob, room, "bob's answer after the move")
    got = await receive(alice, room, "bob's answer after the move")
    check(got is not None and got.decrypted, "alice's olm decrypts bob's answer sent through Myelin")
    for c in (alice, bob):
        await c.close()
    all_passed()


if __name__ == "__main__":
    mode, url, state_dir = sys.argv[1:4]
    asyncio.run(before(url, state_dir) if mode == "before" else after(url, state_dir))
