"""End-to-end encryption through Myelin with matrix-nio[e2e] (libolm through
python-olm): a second crypto stack beside matrix-sdk's vodozemac in sdk-tests/.
Myelin only stores and relays what the clients encrypt; every check below is on
the plaintext that the OTHER side's olm decrypted.

Usage: python nio_e2e.py ALICE_URL ALICE_SERVER [BOB_URL BOB_SERVER]
With two servers Bob is on the second one, so that his keys are queried and
claimed, the room keys sent to his devices and his device-list changes told
over federation.

Scenarios (issue #20 §1), in order:
  a/b. Alice creates a DM with m.room.encryption (m.megolm.v1.aes-sha2) and
       invites Bob; Bob joins; Alice's message reaches Bob as m.room.encrypted
       (the event Myelin serves holds only ciphertext) and Bob's olm decrypts
       it to the exact text; Bob's encrypted answer decrypts for Alice.
  c.   Bob logs in on a second device: Alice's client learns it from the
       device-list change in /sync, and her next message decrypts on both of
       Bob's devices; the new device's answer decrypts for Alice.
  d.   Fallback keys: NOT checked. matrix-nio 0.25.2 neither uploads nor uses
       fallback keys (the word does not occur in its source), and it ignores a
       one-time-key count of 0 in /sync (`if count:`), so a device whose keys
       were all claimed away stays unreachable for new olm sessions until it
       uploads again by itself. What is checked instead: another user's device
       claims all but one of Bob's one-time keys; each claim gets a distinct
       key; Bob's nio sees the low count in /sync and uploads new keys; a new
       device of Alice then claims a fresh key, makes a new olm session, and
       its message decrypts on Bob's device. Then all of Bob's keys are
       claimed: the next claim omits the device (no fallback key uploaded), as
       the spec says.

Exits 0 when every check passed; prints each check, and the first failing one.
"""

import asyncio
import json
import sys
import time
import urllib.parse

from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.store import SqliteMemoryStore

from checks import all_passed, check
from client_http import call

MEGOLM = "m.megolm.v1.aes-sha2"
PASSWORD = "e2e-password-1"


def why(ok, detail):
    """The answer, shown only when a check fails (nio's reprs are long)."""
    return "" if ok else f" ({detail})"


def new_client(url):
    """A nio client with encryption on, its olm account kept in memory."""
    config = AsyncClientConfig(encryption_enabled=True, store=SqliteMemoryStore, store_sync_tokens=False)
    return AsyncClient(url, "", config=config)


async def crypto_sync(c, timeout_ms=1000):
    """One /sync and the key upkeep `sync_forever` does after each: queued
    to-device messages, key upload, key query, one-time key claims."""
    r = await c.sync(timeout=timeout_ms)
    if not isinstance(r, SyncResponse):
        return r
    await c.send_to_device_messages()
    if c.should_upload_keys:
        await c.keys_upload()
    if c.should_query_keys:
        await c.keys_query()
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())
    return r


async def register(url, name, device):
    c = new_client(url)
    r = await c.register(name, PASSWORD, device)
    ok = isinstance(r, RegisterResponse)
    check(ok, f"{name} registers on {url}" + why(ok, r))
    await upload_keys(c, f"{name}'s {device}")
    return c


async def login(url, user_id, device):
    c = new_client(url)
    c.user = user_id
    r = await c.login(PASSWORD, device_name=device)
    ok = isinstance(r, LoginResponse)
    check(ok, f"{user_id} logs in on {device}" + why(ok, r))
    await upload_keys(c, f"{user_id}'s {device}")
    return c


async def upload_keys(c, who):
    r = await c.keys_upload()
    ok = isinstance(r, KeysUploadResponse) and r.signed_curve25519_count > 0
    check(ok, f"{who} uploads device and one-time keys" + why(ok, r))
    r = await crypto_sync(c, 0)
    ok = isinstance(r, SyncResponse)
    check(ok, f"{who} syncs" + why(ok, r))


async def send(c, room_id, text):
    """Sends `text` encrypted (nio shares the room key with every device it
    knows first); returns the event id."""
    r = await c.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text},
                          ignore_unverified_devices=True)
    ok = isinstance(r, RoomSendResponse)
    check(ok, f"{c.user_id} ({c.device_id}) sends {text!r} encrypted" + why(ok, r))
    return r.event_id


async def receive(c, room_id, text, seconds=30):
    """Syncs `c` until its olm decrypts a message with body `text`; a megolm
    event that arrived before its room key is tried again after each sync."""
    pending = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = await crypto_sync(c, 1000)
        room = r.rooms.join.get(room_id) if isinstance(r, SyncResponse) else None
        events = list(room.timeline.events) if room else []
        still = []
        for e in pending:
            try:
                events.append(c.decrypt_event(e))
            except EncryptionError:
                still.append(e)
        pending = still
        for e in events:
            if isinstance(e, MegolmEvent):
                pending.append(e)
            elif isinstance(e, RoomMessageText) and e.body == text:
                return e
    return None


def check_ciphertext_on_wire(base, token, room_id, event_id, text, who):
    """The event as Myelin serves it: m.room.encrypted, megolm, no plaintext."""
    path = "/_matrix/client/v3/rooms/{}/event/{}".format(
        urllib.parse.quote(room_id, safe=""), urllib.parse.quote(event_id, safe=""))
    s, j = call(base, "GET", path, token=token)
    content = j.get("content", {})
    ok = (s == 200 and j.get("type") == "m.room.encrypted" and content.get("algorithm") == MEGOLM
          and bool(content.get("ciphertext")) and text not in json.dumps(j))
    check(ok, f"{who} is served {event_id} as m.room.encrypted megolm ciphertext without the plaintext"
          + why(ok, f"{s} {j}"))
    return content


async def expect_decrypted(c, base, room_id, text, sender, who):
    e = await receive(c, room_id, text)
    check(e is not None, f"{who} decrypts {text!r}")
    check(e.decrypted and e.sender == sender.user_id,
          f"{who}'s copy was decrypted by olm (decrypted={e.decrypted}) and is from {sender.user_id}")
    content = check_ciphertext_on_wire(base, c.access_token, room_id, e.event_id, text, who)
    check(content.get("session_id") == e.session_id,
          f"{who} decrypted it with the megolm session the event names ({e.session_id})")
    return e


async def main(alice_url, alice_server, bob_url, bob_server):
    tag = str(int(time.time() * 1000))[-6:]
    alice = await register(alice_url, f"alice{tag}", "alice laptop")
    bob = await register(bob_url, f"bob{tag}", "bob laptop")
    clients = [alice, bob]
    try:
        # a/b: an encrypted DM, both directions.
        r = await alice.room_create(
            name="nio e2e", is_direct=True, invite=[bob.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
        )
        ok = isinstance(r, RoomCreateResponse)
        check(ok, "alice creates an encrypted DM inviting bob" + why(ok, r))
        room_id = r.room_id
        deadline = time.monotonic() + 30
        while room_id not in bob.invited_rooms and time.monotonic() < deadline:
            await crypto_sync(bob)
        check(room_id in bob.invited_rooms, "bob sees the invite")
        r = await bob.join(room_id)
        ok = isinstance(r, JoinResponse)
        check(ok, "bob joins" + why(ok, r))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            room_id in bob.rooms and bob.rooms[room_id].encrypted
            and room_id in alice.rooms and bob.user_id in alice.rooms[room_id].users
        ):
            await crypto_sync(bob, 200)
            await crypto_sync(alice, 200)
        check(bob.rooms.get(room_id) is not None and bob.rooms[room_id].encrypted,
              "bob's nio knows the room is encrypted")
        check(alice.rooms.get(room_id) is not None and alice.rooms[room_id].encrypted
              and bob.user_id in alice.rooms[room_id].users, "alice's nio sees bob joined the encrypted room")

        text = f"secret hello from alice {tag}"
        await send(alice, room_id, text)
        first = await expect_decrypted(bob, bob_url, room_id, text, alice, "bob's laptop")
        text = f"secret answer from bob {tag}"
        await send(bob, room_id, text)
        await expect_decrypted(alice, alice_url, room_id, text, bob, "alice")

        # c: a second device of bob's, learnt through the device-list change.
        phone = await login(bob_url, bob.user_id, "bob phone")
        clients.append(phone)
        check(phone.device_id != bob.device_id, f"bob's phone is a new device ({phone.device_id})")
        deadline = time.monotonic() + 30
        known = lambda: {d.id for d in alice.device_store.active_user_devices(bob.user_id)}
        while phone.device_id not in known() and time.monotonic() < deadline:
            await crypto_sync(alice, 500)
        check(phone.device_id in known(), f"alice's nio learns bob's new device from a device-list update ({known()})")
        text = f"secret for both of bob's devices {tag}"
        await send(alice, room_id, text)
        got = await expect_decrypted(phone, bob_url, room_id, text, alice, "bob's phone")
        check(got.session_id != first.session_id, "alice's nio started a new megolm session for the new device")
        await expect_decrypted(bob, bob_url, room_id, text, alice, "bob's laptop")
        text = f"secret from bob's phone {tag}"
        await send(phone, room_id, text)
        await expect_decrypted(alice, alice_url, room_id, text, phone, "alice")

        # d: one-time keys claimed away (fallback keys: see the docstring).
        mallory = await register(alice_url, f"mallory{tag}", "mallory laptop")
        clients.append(mallory)
        claim = {"one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}}}

        def claim_one():
            s, j = call(alice_url, "POST", "/_matrix/client/v3/keys/claim", claim, token=mallory.access_token)
            return s, j.get("one_time_keys", {}).get(bob.user_id, {}).get(bob.device_id, {})

        s, j = call(bob_url, "POST", "/_matrix/client/v3/keys/upload", {}, token=bob.access_token)
        count = j.get("one_time_key_counts", {}).get("signed_curve25519", 0)
        check(s == 200 and count >= 2, f"bob's laptop holds {count} one-time keys on its server")
        seen = set()
        for _ in range(count - 1):
            s, keys = await asyncio.to_thread(claim_one)
            if s != 200 or len(keys) != 1:
                break
            seen.update(keys)
        check(len(seen) == count - 1, f"mallory's device claims {count - 1} distinct one-time keys of bob's laptop ({len(seen)})")
        deadline = time.monotonic() + 30
        uploaded = False
        while not uploaded and time.monotonic() < deadline:
            r = await bob.sync(timeout=500)
            low = isinstance(r, SyncResponse) and r.device_key_count.signed_curve25519 == 1
            if low and bob.should_upload_keys:
                up = await bob.keys_upload()
                uploaded = isinstance(up, KeysUploadResponse) and up.signed_curve25519_count > 1
        check(uploaded, "bob's nio sees 1 one-time key left in /sync and uploads new ones")

        alice2 = await login(alice_url, alice.user_id, "alice tablet")
        clients.append(alice2)
        deadline = time.monotonic() + 30
        while not (room_id in alice2.rooms and alice2.rooms[room_id].encrypted) and time.monotonic() < deadline:
            await crypto_sync(alice2, 200)
        check(room_id in alice2.rooms and alice2.rooms[room_id].encrypted, "alice's tablet sees the encrypted DM")
        text = f"secret from alice's tablet after the claims {tag}"
        await send(alice2, room_id, text)
        await expect_decrypted(bob, bob_url, room_id, text, alice2, "bob's laptop (a new olm session)")
        check(bob.olm.session_store.get(alice2.olm.account.identity_keys["curve25519"]),
              "bob's laptop holds an olm session with alice's tablet")

        # All of bob's keys claimed: without a fallback key the device is omitted.
        drained = 0
        while drained < 200:
            s, keys = await asyncio.to_thread(claim_one)
            if s != 200 or not keys:
                break
            drained += 1
        check(s == 200 and keys == {} and drained < 200,
              f"once mallory claimed the other {drained} keys, a claim omits bob's laptop ({s} {keys})")

        all_passed()
    finally:
        for c in clients:
            await c.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2:
        args += args
    if len(args) != 4:
        sys.exit(__doc__)
    asyncio.run(main(*args))
