"""Everyday chat against a Myelin server with matrix-nio, as a user would do it.

Usage: python nio_chat.py http://127.0.0.1:PORT SERVER_NAME
Exits 0 when every step worked; prints the failing step otherwise.
"""

import asyncio
import io
import sys
import time

from nio import (
    AsyncClient,
    ProfileGetDisplayNameResponse,
    ProfileSetDisplayNameResponse,
    ReactionEvent,
    RedactedEvent,
    RedactionEvent,
    RoomRedactResponse,
    RoomTypingResponse,
    RoomMemberEvent,
    TypingNoticeEvent,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    DownloadResponse,
    RoomMessageImage,
    RoomMessageText,
    RoomSendResponse,
    UploadResponse,
    SyncResponse,
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


async def main(url: str, server: str) -> None:
    alice = AsyncClient(url, f"@alice:{server}")
    bob = AsyncClient(url, f"@bob:{server}")
    try:
        r = await alice.register("alice", "alice-password-1", "alice laptop")
        check(isinstance(r, RegisterResponse), f"alice registers ({r})")
        r = await bob.register("bob", "bob-password-1", "bob laptop")
        check(isinstance(r, RegisterResponse), f"bob registers ({r})")

        # Bob logs in again on a second device, with his password.
        phone = AsyncClient(url, f"@bob:{server}")
        r = await phone.login("bob-password-1", device_name="bob phone")
        check(isinstance(r, LoginResponse), f"bob logs in with a password ({r})")

        r = await alice.room_create(name="nio chat", invite=[f"@bob:{server}"], is_direct=True)
        check(isinstance(r, RoomCreateResponse), f"alice creates a DM inviting bob ({r})")
        room_id = r.room_id

        r = await phone.sync(timeout=3000)
        check(isinstance(r, SyncResponse), f"bob syncs ({r})")
        check(room_id in r.rooms.invite, "bob sees the invite")

        r = await phone.join(room_id)
        check(isinstance(r, JoinResponse), f"bob joins ({r})")
        r = await phone.sync(timeout=3000)
        check(isinstance(r, SyncResponse), f"bob syncs after joining ({r})")
        check(room_id in r.rooms.join, "the room is in bob's joined rooms")

        r = await alice.sync(timeout=3000)
        check(isinstance(r, SyncResponse), f"alice syncs ({r})")
        r = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"})
        check(isinstance(r, RoomSendResponse), f"alice sends a message ({r})")

        got = None
        deadline = time.monotonic() + 15
        while got is None and time.monotonic() < deadline:
            r = await phone.sync(timeout=5000)
            check(isinstance(r, SyncResponse), "bob long-polls")
            room = r.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if isinstance(event, RoomMessageText) and event.body == "hello from nio":
                    got = event
        check(got is not None, "bob receives alice's message through sync")
        check(got.sender == f"@alice:{server}", "the message is from alice")

        r = await phone.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"})
        check(isinstance(r, RoomSendResponse), "bob answers")
        seen = False
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            r = await alice.sync(timeout=5000)
            room = r.rooms.join.get(room_id) if isinstance(r, SyncResponse) else None
            seen = any(
                isinstance(e, RoomMessageText) and e.body == "hi alice" for e in (room.timeline.events if room else [])
            )
        check(seen, "alice receives bob's answer")

        # Everyday features, each checked on the other side.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "helo"})
        check(isinstance(sent, RoomSendResponse), "alice sends a message to edit")
        msg_id = sent.event_id
        r = await alice.room_send(room_id, "m.room.message", {
            "msgtype": "m.text", "body": "* hello",
            "m.new_content": {"msgtype": "m.text", "body": "hello"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": msg_id},
        })
        check(isinstance(r, RoomSendResponse), "alice edits it")
        r = await phone.room_send(room_id, "m.room.message", {
            "msgtype": "m.text", "body": "> helo\n\nquoting you",
            "m.relates_to": {"m.in_reply_to": {"event_id": msg_id}},
        })
        check(isinstance(r, RoomSendResponse), "bob replies to it")
        reply_id = r.event_id
        r = await phone.room_send(room_id, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": msg_id, "key": "👍"},
        })
        check(isinstance(r, RoomSendResponse), "bob reacts to it")
        r = await alice.room_typing(room_id, True, 20000)
        check(isinstance(r, RoomTypingResponse), "alice types")
        r = await phone.room_redact(room_id, reply_id, reason="never mind")
        check(isinstance(r, RoomRedactResponse), "bob deletes his reply")
        r = await alice.set_displayname("Alice Nio")
        check(isinstance(r, ProfileSetDisplayNameResponse), "alice changes her display name")
        png = bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082"
        ) + bytes(range(256)) * 40
        up, _ = await alice.upload(io.BytesIO(png), content_type="image/png", filename="dot.png", filesize=len(png))
        check(isinstance(up, UploadResponse), f"alice uploads an image ({up})")
        r = await alice.room_send(room_id, "m.room.message", {
            "msgtype": "m.image", "body": "dot.png", "url": up.content_uri,
            "info": {"mimetype": "image/png", "size": len(png), "w": 1, "h": 1},
        })
        check(isinstance(r, RoomSendResponse), "alice sends the image")
        image_id = r.event_id

        want = {"edit", "reply", "reaction", "typing", "redaction", "profile", "image"}
        image_url = None
        got_features = set()
        deadline = time.monotonic() + 20
        while want - got_features and time.monotonic() < deadline:
            r = await phone.sync(timeout=3000)
            room = r.rooms.join.get(room_id) if isinstance(r, SyncResponse) else None
            for e in room.timeline.events if room else []:
                relates = e.source.get("content", {}).get("m.relates_to", {})
                if relates.get("rel_type") == "m.replace" and relates.get("event_id") == msg_id:
                    got_features.add("edit")
                if isinstance(e, ReactionEvent) or e.source.get("type") == "m.reaction":
                    got_features.add("reaction")
                if isinstance(e, RedactionEvent) or e.source.get("type") == "m.room.redaction":
                    got_features.add("redaction")
                if isinstance(e, (RoomMessageText, RedactedEvent)) and e.event_id == reply_id:
                    got_features.add("reply")
                if isinstance(e, RoomMemberEvent) and e.state_key == f"@alice:{server}" and (e.content or {}).get("displayname") == "Alice Nio":
                    got_features.add("profile")
                if isinstance(e, RoomMessageImage) and e.event_id == image_id:
                    got_features.add("image")
                    image_url = e.url
            for e in room.ephemeral if room else []:
                if isinstance(e, TypingNoticeEvent) and f"@alice:{server}" in e.users:
                    got_features.add("typing")
        for feature in sorted(want):
            check(feature in got_features, f"the other side sees the {feature}")
        r = await phone.get_displayname(f"@alice:{server}")
        check(isinstance(r, ProfileGetDisplayNameResponse) and r.displayname == "Alice Nio", "bob reads alice's new name")
        r = await phone.download(mxc=image_url)
        check(isinstance(r, DownloadResponse) and r.body == png, f"bob downloads the image byte for byte ({type(r).__name__})")
        print(f"{PASSED} passed, 0 failed", flush=True)
        await phone.close()
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
