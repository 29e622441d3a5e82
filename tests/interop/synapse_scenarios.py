"""Myelin and Synapse federating, checked from the users' side of each server.

Usage: python synapse_scenarios.py MYELIN_CLIENT_URL SYNAPSE_CLIENT_URL MYELIN_SERVER SYNAPSE_SERVER
Exits 0 when every check passed; prints each check.
"""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from client_http import call

MY, SY, MY_NAME, SY_NAME = sys.argv[1:5]
q = urllib.parse.quote


PASSED = 0


def check(cond, what):
    global PASSED
    print(("ok: " if cond else "FAILED: ") + what, flush=True)
    if not cond:
        print(f"{PASSED} passed, 1 failed", flush=True)
        sys.exit(1)
    PASSED += 1


def register(base, name):
    s, j = call(base, "POST", "/_matrix/client/v3/register",
                {"username": name, "password": "pw-pw-pw-1", "auth": {"type": "m.login.dummy"}})
    check(s == 200, f"{name} registers on {base} ({s} {j})")
    return j["access_token"], j["user_id"]


def send(base, token, room, body, txn):
    s, j = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": body}, token)
    check(s == 200, f"send {body!r} ({s} {j})")


def sees(base, token, room, text, section="join", seconds=30):
    since, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={q(since)}" if since else "")
        s, j = call(base, "GET", path, None, token)
        since = j.get("next_batch", since)
        r = j.get("rooms", {}).get(section, {}).get(room, {})
        if section == "invite" and r:
            return True
        if any(e.get("content", {}).get("body") == text for e in r.get("timeline", {}).get("events", [])):
            return True
    return False


mt, mu = register(MY, "alice")
st, su = register(SY, "bob")

# A room on Myelin; the Synapse user joins it.
s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "on myelin"}, mt)
check(s == 200, "alice creates a room on Myelin")
room = j["room_id"]
s, j = call(SY, "POST", f"/_matrix/client/v3/join/{q(room)}?server_name={q(MY_NAME)}", {}, st)
check(s == 200, f"bob on Synapse joins it ({s} {j})")
send(MY, mt, room, "hello from myelin", "t1")
check(sees(SY, st, room, "hello from myelin"), "bob on Synapse receives alice's message")
send(SY, st, room, "hello from synapse", "t2")
check(sees(MY, mt, room, "hello from synapse"), "alice on Myelin receives bob's message")

# A room on Synapse with history; the Myelin user joins it.
s, j = call(SY, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "on synapse"}, st)
check(s == 200, "bob creates a room on Synapse")
room2 = j["room_id"]
for i in range(200):
    s, j = call(SY, "PUT", f"/_matrix/client/v3/rooms/{q(room2)}/send/m.room.message/h{i}",
                {"msgtype": "m.text", "body": f"history {i}"}, st)
    if s != 200:
        check(False, f"history message {i} ({s} {j})")
check(True, "bob writes 200 messages of history on Synapse")
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(room2)}?server_name={q(SY_NAME)}", {}, mt)
check(s == 200, f"alice on Myelin joins it ({s} {j})")
s, j = call(MY, "GET", f"/_matrix/client/v3/rooms/{q(room2)}/state/m.room.name", None, mt)
check(j.get("name") == "on synapse", "Myelin has the room's state")
send(SY, st, room2, "synapse to myelin", "t3")
check(sees(MY, mt, room2, "synapse to myelin"), "alice receives messages in the Synapse room")
send(MY, mt, room2, "myelin to synapse", "t4")
check(sees(SY, st, room2, "myelin to synapse"), "bob receives alice's message in his room")
history, frm = [], None
for _ in range(40):
    path = f"/_matrix/client/v3/rooms/{q(room2)}/messages?dir=b&limit=50" + (f"&from={q(frm)}" if frm else "")
    s, j = call(MY, "GET", path, None, mt)
    history += [e["content"].get("body") for e in j.get("chunk", []) if e.get("type") == "m.room.message"]
    frm = j.get("end")
    if not frm:
        break
missing = [i for i in range(200) if f"history {i}" not in history]
check(not missing, f"all 200 earlier messages are backfilled on Myelin ({len(history)} seen, missing {missing[:10]})")
check(len([h for h in history if h and h.startswith("history ")]) == 200, "each exactly once")

# Invites across, both ways.
s, j = call(SY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "invite": [mu], "is_direct": True}, st)
room3 = j.get("room_id")
check(s == 200 and sees(MY, mt, room3, None, section="invite"), "alice on Myelin gets bob's invite")
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(room3)}", {}, mt)
check(s == 200, f"alice accepts it ({s} {j})")
send(SY, st, room3, "dm from synapse", "t5")
check(sees(MY, mt, room3, "dm from synapse"), "alice receives the DM")
s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "invite": [su], "is_direct": True}, mt)
room4 = j.get("room_id")
check(s == 200 and sees(SY, st, room4, None, section="invite"), "bob on Synapse gets alice's invite")
s, j = call(SY, "POST", f"/_matrix/client/v3/join/{q(room4)}", {}, st)
check(s == 200, f"bob accepts it ({s} {j})")
send(MY, mt, room4, "dm from myelin", "t6")
check(sees(SY, st, room4, "dm from myelin"), "bob receives the DM")

# Profiles across.
s, j = call(MY, "PUT", f"/_matrix/client/v3/profile/{q(mu)}/displayname", {"displayname": "Alice M"}, mt)
s, j = call(SY, "GET", f"/_matrix/client/v3/profile/{q(mu)}", None, st)
check(j.get("displayname") == "Alice M", f"Synapse reads alice's profile over federation ({j})")
s, j = call(MY, "GET", f"/_matrix/client/v3/profile/{q(su)}", None, mt)
check(s == 200 and j.get("displayname") == "bob", f"Myelin reads bob's profile over federation ({j})")
deadline, shown = time.monotonic() + 20, None
while time.monotonic() < deadline:
    s, j = call(SY, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(mu)}", None, st)
    shown = j.get("displayname")
    if shown == "Alice M":
        break
    time.sleep(0.3)
check(shown == "Alice M", f"alice's new name reaches the shared room on Synapse as a member event ({shown})")
s, j = call(SY, "PUT", f"/_matrix/client/v3/profile/{q(su)}/avatar_url", {"avatar_url": "mxc://example/bobface"}, st)
deadline, shown = time.monotonic() + 20, None
while time.monotonic() < deadline:
    s, j = call(MY, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(su)}", None, mt)
    shown = j.get("avatar_url")
    if shown == "mxc://example/bobface":
        break
    time.sleep(0.3)
check(shown == "mxc://example/bobface", f"bob's new avatar reaches the shared room on Myelin ({shown})")


def membership_becomes(base, token, room, user, want, seconds=20):
    """Polls the room's member state of `user` on `base` until it is `want`; returns the last value."""
    deadline, m = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        s, j = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(user)}", None, token)
        m = j.get("membership")
        if m == want:
            break
        time.sleep(0.3)
    return m


def event_seen(base, token, room, pred, seconds=30):
    """The first event in the room's timeline, as this user's sync delivers it, that matches."""
    since, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={q(since)}" if since else "")
        s, j = call(base, "GET", path, None, token)
        since = j.get("next_batch", since)
        for e in j.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", []):
            if pred(e):
                return e
    return None


def ephemeral_seen(base, token, room, pred, seconds=20):
    since, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={q(since)}" if since else "")
        s, j = call(base, "GET", path, None, token)
        since = j.get("next_batch", since)
        for e in j.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", []):
            if pred(e):
                return e
    return None


def put_event(base, token, room, kind, content, txn):
    s, j = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/{kind}/{txn}", content, token)
    check(s == 200, f"send {kind} ({s} {j})")
    return j["event_id"]


def upload(base, token, data, content_type):
    req = urllib.request.Request(base + "/_matrix/media/v3/upload?filename=pic.png", data=data, method="POST")
    req.add_header("Content-Type", content_type)
    req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["content_uri"]


def download(base, token, mxc):
    req = urllib.request.Request(base + "/_matrix/client/v1/media/download/" + mxc[len("mxc://"):])
    req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# Edits, replies, reactions and redactions, in the Myelin room both of them are in.
orig = put_event(MY, mt, room, "m.room.message", {"msgtype": "m.text", "body": "typo mesage"}, "e1")
put_event(MY, mt, room, "m.room.message", {
    "msgtype": "m.text", "body": "* typo message",
    "m.new_content": {"msgtype": "m.text", "body": "typo message"},
    "m.relates_to": {"rel_type": "m.replace", "event_id": orig}}, "e2")
e = event_seen(SY, st, room, lambda e: e.get("content", {}).get("m.relates_to", {}).get("rel_type") == "m.replace")
check(e is not None and e["content"]["m.new_content"]["body"] == "typo message", "bob on Synapse receives alice's edit")
put_event(SY, st, room, "m.room.message", {
    "msgtype": "m.text", "body": "> typo message\n\nindeed", "format": "org.matrix.custom.html",
    "formatted_body": "<mx-reply></mx-reply><b>indeed</b>",
    "m.relates_to": {"m.in_reply_to": {"event_id": orig}}}, "r1")
e = event_seen(MY, mt, room, lambda e: e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id") == orig)
check(e is not None and e["content"].get("formatted_body") == "<mx-reply></mx-reply><b>indeed</b>", "alice on Myelin receives bob's formatted reply")
put_event(SY, st, room, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": orig, "key": "👍"}}, "x1")
e = event_seen(MY, mt, room, lambda e: e.get("type") == "m.reaction")
check(e is not None and e["content"]["m.relates_to"]["key"] == "👍", "alice on Myelin receives bob's reaction")
s, j = call(MY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/redact/{q(orig)}/d1", {"reason": "oops"}, mt)
check(s == 200, f"alice redacts her message ({s} {j})")
e = event_seen(SY, st, room, lambda e: e.get("type") == "m.room.redaction")
check(e is not None and (e.get("redacts") == orig or e["content"].get("redacts") == orig), "bob on Synapse receives the redaction")
deadline, body = time.monotonic() + 20, "?"
while time.monotonic() < deadline:
    s, j = call(SY, "GET", f"/_matrix/client/v3/rooms/{q(room)}/event/{q(orig)}", None, st)
    body = j.get("content", {}).get("body")
    if s == 200 and body is None:
        break
    time.sleep(0.5)
check(body is None, "Synapse serves the redacted message without its body")

# Mentions: a formatted mention of the Synapse user reaches him with m.mentions.
put_event(MY, mt, room, "m.room.message", {
    "msgtype": "m.text", "body": "bob: ping", "format": "org.matrix.custom.html",
    "formatted_body": f'<a href="https://matrix.to/#/{su}">bob</a>: ping', "m.mentions": {"user_ids": [su]}}, "m1")
e = event_seen(SY, st, room, lambda e: e.get("content", {}).get("body") == "bob: ping")
check(e is not None and e["content"]["m.mentions"]["user_ids"] == [su], "bob on Synapse receives the mention")

# Typing both ways.
call(SY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(su)}", {"typing": True, "timeout": 20000}, st)
e = ephemeral_seen(MY, mt, room, lambda e: e.get("type") == "m.typing" and su in e["content"].get("user_ids", []))
check(e is not None, "alice on Myelin sees bob typing")
call(MY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(mu)}", {"typing": True, "timeout": 20000}, mt)
e = ephemeral_seen(SY, st, room, lambda e: e.get("type") == "m.typing" and mu in e["content"].get("user_ids", []))
check(e is not None, "bob on Synapse sees alice typing")

# Media both ways, byte for byte.
blob = bytes((i * 7919) % 251 for i in range(200_000))
mxc = upload(MY, mt, blob, "image/png")
s, data = download(SY, st, mxc)
check(s == 200 and data == blob, f"bob on Synapse downloads alice's upload from Myelin ({s}, {len(data)} bytes)")
mxc2 = upload(SY, st, blob[::-1], "image/png")
s, data = download(MY, mt, mxc2)
check(s == 200 and data == blob[::-1], f"alice on Myelin downloads bob's upload from Synapse ({s}, {len(data)} bytes)")

# The public room directory across servers.
s, j = call(MY, "PUT", f"/_matrix/client/v3/directory/list/room/{q(room)}", {"visibility": "public"}, mt)
check(s == 200, f"alice publishes her room ({s} {j})")
s, j = call(SY, "POST", f"/_matrix/client/v3/publicRooms?server={q(MY_NAME)}", {"filter": {"generic_search_term": "myelin"}}, st)
check(s == 200 and any(r.get("room_id") == room for r in j.get("chunk", [])), f"bob finds it from Synapse ({s} {j})")
s, j = call(SY, "PUT", f"/_matrix/client/v3/directory/list/room/{q(room2)}", {"visibility": "public"}, st)
check(s == 200, f"bob publishes his room on Synapse ({s} {j})")
s, j = call(MY, "POST", f"/_matrix/client/v3/publicRooms?server={q(SY_NAME)}", {"filter": {"generic_search_term": "synapse"}}, mt)
check(s == 200 and any(r.get("room_id") == room2 for r in j.get("chunk", [])), f"alice finds bob's room from Myelin ({s} {j})")

# Joining by alias across servers (query/directory both ways).
s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "room_alias_name": "lobby"}, mt)
check(s == 200, f"alice creates #lobby on Myelin ({s} {j})")
lobby = j["room_id"]
s, j = call(SY, "POST", f"/_matrix/client/v3/join/{q('#lobby:' + MY_NAME)}", {}, st)
check(s == 200 and j.get("room_id") == lobby, f"bob on Synapse joins #lobby:{MY_NAME} by alias ({s} {j})")
s, j = call(SY, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "room_alias_name": "hall"}, st)
check(s == 200, f"bob creates #hall on Synapse ({s} {j})")
hall = j["room_id"]
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q('#hall:' + SY_NAME)}", {}, mt)
check(s == 200 and j.get("room_id") == hall, f"alice on Myelin joins #hall:{SY_NAME} by alias ({s} {j})")
send(SY, st, hall, "welcome to the hall", "hall1")
check(sees(MY, mt, hall, "welcome to the hall"), "alice receives messages in the room she joined by alias")

# Declining an invite from the other server.
s, j = call(SY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "invite": [mu]}, st)
room5 = j.get("room_id")
check(s == 200 and sees(MY, mt, room5, None, section="invite"), "alice gets another invite from bob")
s, j = call(MY, "POST", f"/_matrix/client/v3/rooms/{q(room5)}/leave", {}, mt)
check(s == 200, f"alice declines it ({s} {j})")
s, j = call(SY, "GET", f"/_matrix/client/v3/rooms/{q(room5)}/state/m.room.member/{q(mu)}", None, st)
check(j.get("membership") == "leave", f"Synapse records alice's refusal ({s} {j})")
s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "invite": [su]}, mt)
room6 = j.get("room_id")
check(s == 200 and sees(SY, st, room6, None, section="invite"), "bob gets another invite from alice")
s, j = call(SY, "POST", f"/_matrix/client/v3/rooms/{q(room6)}/leave", {}, st)
check(s == 200, f"bob declines it ({s} {j})")
m = membership_becomes(MY, mt, room6, su, "leave")
check(m == "leave", f"Myelin records bob's refusal ({m})")
# Read receipts both ways.
last = put_event(MY, mt, room, "m.room.message", {"msgtype": "m.text", "body": "read me"}, "rr1")
check(sees(SY, st, room, "read me"), "bob receives the message he will mark read")
s, j = call(SY, "POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(last)}", {}, st)
check(s == 200, f"bob marks alice's message read ({s} {j})")
e = ephemeral_seen(MY, mt, room, lambda e: e.get("type") == "m.receipt" and su in e["content"].get(last, {}).get("m.read", {}))
check(e is not None, "alice on Myelin sees bob's read receipt")
last2 = put_event(SY, st, room, "m.room.message", {"msgtype": "m.text", "body": "read me too"}, "rr2")
check(sees(MY, mt, room, "read me too"), "alice receives bob's message")
s, j = call(MY, "POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(last2)}", {}, mt)
check(s == 200, f"alice marks it read ({s} {j})")
e = ephemeral_seen(SY, st, room, lambda e: e.get("type") == "m.receipt" and mu in e["content"].get(last2, {}).get("m.read", {}))
check(e is not None, "bob on Synapse sees alice's read receipt")

# End-to-end encryption keys both ways: query, claim, to-device, device-list updates.
def device_keys(user, device, curve):
    return {"user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{device}": curve, f"ed25519:{device}": "ed-" + curve},
            "signatures": {user: {f"ed25519:{device}": "sig-" + curve}}}


def whoami(base, token):
    return call(base, "GET", "/_matrix/client/v3/account/whoami", None, token)[1]["device_id"]


def login_device(base, name, device):
    s, j = call(base, "POST", "/_matrix/client/v3/login",
                {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                 "password": "pw-pw-pw-1", "device_id": device})
    check(s == 200, f"{name} logs in a second device on {base} ({s} {j})")
    return j["access_token"]


def sync_token(base, token):
    return call(base, "GET", "/_matrix/client/v3/sync?timeout=0", None, token)[1].get("next_batch")


def device_list_changed(base, token, user, since, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s, j = call(base, "GET", f"/_matrix/client/v3/sync?timeout=2000&since={q(since)}", None, token)
        since = j.get("next_batch", since)
        if user in j.get("device_lists", {}).get("changed", []):
            return True
    return False


def to_device_seen(base, token, kind, seconds=30):
    since, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={q(since)}" if since else "")
        s, j = call(base, "GET", path, None, token)
        since = j.get("next_batch", since)
        for e in j.get("to_device", {}).get("events", []):
            if e.get("type") == kind:
                return e
    return None


md, sd = whoami(MY, mt), whoami(SY, st)
s, j = call(MY, "POST", "/_matrix/client/v3/keys/upload",
            {"device_keys": device_keys(mu, md, "alice-curve"),
             "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "alice-otk", "signatures": {}}}}, mt)
check(s == 200 and j["one_time_key_counts"].get("signed_curve25519") == 1, f"alice uploads keys on Myelin ({s} {j})")
s, j = call(SY, "POST", "/_matrix/client/v3/keys/upload",
            {"device_keys": device_keys(su, sd, "bob-curve"),
             "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "bob-otk", "signatures": {}}}}, st)
check(s == 200, f"bob uploads keys on Synapse ({s} {j})")
s, j = call(SY, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {mu: []}}, st)
got = j.get("device_keys", {}).get(mu, {}).get(md, {})
check(got.get("keys", {}).get(f"curve25519:{md}") == "alice-curve" and got.get("signatures") == device_keys(mu, md, "alice-curve")["signatures"],
      f"bob on Synapse reads alice's device keys from Myelin, signatures intact ({s} {j})")
s, j = call(MY, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {su: []}}, mt)
got = j.get("device_keys", {}).get(su, {}).get(sd, {})
check(got.get("keys", {}).get(f"curve25519:{sd}") == "bob-curve", f"alice on Myelin reads bob's device keys from Synapse ({s} {j})")
s, j = call(SY, "POST", "/_matrix/client/v3/keys/claim", {"one_time_keys": {mu: {md: "signed_curve25519"}}}, st)
got = j.get("one_time_keys", {}).get(mu, {}).get(md, {})
check(list(got.values()) == [{"key": "alice-otk", "signatures": {}}], f"bob on Synapse claims alice's one-time key from Myelin ({s} {j})")
s, j = call(MY, "POST", "/_matrix/client/v3/keys/claim", {"one_time_keys": {su: {sd: "signed_curve25519"}}}, mt)
got = j.get("one_time_keys", {}).get(su, {}).get(sd, {})
check([v.get("key") for v in got.values()] == ["bob-otk"], f"alice on Myelin claims bob's one-time key from Synapse ({s} {j})")
s, j = call(MY, "GET", "/_matrix/client/v3/sync?timeout=0", None, mt)
check(j.get("device_one_time_keys_count", {}).get("signed_curve25519") == 0, f"Myelin handed alice's key out once ({j.get('device_one_time_keys_count')})")
s, j = call(MY, "PUT", "/_matrix/client/v3/sendToDevice/m.test.ping/td1", {"messages": {su: {sd: {"n": 1}}}}, mt)
e = to_device_seen(SY, st, "m.test.ping")
check(e is not None and e.get("sender") == mu and e["content"].get("n") == 1, f"bob's device on Synapse gets alice's to-device message ({e})")
s, j = call(SY, "PUT", "/_matrix/client/v3/sendToDevice/m.test.pong/td2", {"messages": {mu: {md: {"n": 2}}}}, st)
e = to_device_seen(MY, mt, "m.test.pong")
check(e is not None and e.get("sender") == su and e["content"].get("n") == 2, f"alice's device on Myelin gets bob's to-device message ({e})")
since_sy = sync_token(SY, st)
phone = login_device(MY, "alice", "ALICEPHONE")
s, j = call(MY, "POST", "/_matrix/client/v3/keys/upload", {"device_keys": device_keys(mu, "ALICEPHONE", "phone-curve")}, phone)
check(device_list_changed(SY, st, mu, since_sy), "bob on Synapse is told alice's device list changed")
s, j = call(SY, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {mu: []}}, st)
check("ALICEPHONE" in j.get("device_keys", {}).get(mu, {}), f"bob on Synapse sees alice's new device ({s} {j})")
since_my = sync_token(MY, mt)
bphone = login_device(SY, "bob", "BOBPHONE")
s, j = call(SY, "POST", "/_matrix/client/v3/keys/upload", {"device_keys": device_keys(su, "BOBPHONE", "bphone-curve")}, bphone)
check(device_list_changed(MY, mt, su, since_my), "alice on Myelin is told bob's device list changed")
s, j = call(MY, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {su: []}}, mt)
check("BOBPHONE" in j.get("device_keys", {}).get(su, {}), f"alice on Myelin sees bob's new device ({s} {j})")

# Knocking both ways: knock, the knock seen by the room's admin, invite, join.
knock_rule = [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]
s, j = call(SY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "name": "knock on synapse", "initial_state": knock_rule}, st)
kroom = j.get("room_id")
s, j = call(MY, "POST", f"/_matrix/client/v3/knock/{q(kroom)}?via={q(SY_NAME)}", {"reason": "alice wants in"}, mt)
check(s == 200, f"alice on Myelin knocks on bob's room on Synapse ({s} {j})")
m = membership_becomes(SY, st, kroom, mu, "knock")
check(m == "knock", f"Synapse records alice's knock ({m})")
s, j = call(SY, "POST", f"/_matrix/client/v3/rooms/{q(kroom)}/invite", {"user_id": mu}, st)
check(s == 200 and sees(MY, mt, kroom, None, section="invite"), f"bob lets alice in; she gets the invite ({s} {j})")
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(kroom)}", {}, mt)
check(s == 200 and membership_becomes(SY, st, kroom, mu, "join") == "join", f"alice joins after knocking ({s} {j})")
s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "name": "knock on myelin", "initial_state": knock_rule}, mt)
kroom2 = j.get("room_id")
s, j = call(SY, "POST", f"/_matrix/client/v3/knock/{q(kroom2)}?server_name={q(MY_NAME)}", {"reason": "bob wants in"}, st)
check(s == 200, f"bob on Synapse knocks on alice's room on Myelin ({s} {j})")
m = membership_becomes(MY, mt, kroom2, su, "knock")
check(m == "knock", f"Myelin records bob's knock ({m})")
s, j = call(MY, "POST", f"/_matrix/client/v3/rooms/{q(kroom2)}/invite", {"user_id": su}, mt)
check(s == 200 and sees(SY, st, kroom2, None, section="invite"), f"alice lets bob in; he gets the invite ({s} {j})")
s, j = call(SY, "POST", f"/_matrix/client/v3/join/{q(kroom2)}", {}, st)
check(s == 200 and membership_becomes(MY, mt, kroom2, su, "join") == "join", f"bob joins after knocking ({s} {j})")

# Leaving is seen on the other side.
s, j = call(SY, "POST", f"/_matrix/client/v3/rooms/{q(room3)}/leave", {}, st)
check(s == 200, f"bob leaves the DM he created ({s} {j})")
m = membership_becomes(MY, mt, room3, su, "leave")
check(m == "leave", f"Myelin sees bob leave ({m})")

# Deleting a Myelin account reaches Synapse: the user leaves the Synapse room.
ct, cu = register(MY, "carol")
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(hall)}", {}, ct)
check(s == 200, f"carol on Myelin joins bob's room ({s} {j})")
m = membership_becomes(SY, st, hall, cu, "join")
check(m == "join", f"Synapse sees carol join ({m})")
s, j = call(MY, "POST", "/_matrix/client/v3/account/deactivate", {
    "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": cu}, "password": "pw-pw-pw-1"}}, ct)
check(s == 200, f"carol deactivates her account ({s} {j})")
m = membership_becomes(SY, st, hall, cu, "leave")
check(m == "leave", f"Synapse sees the deactivated user leave ({m})")

# A room server ACL on Myelin's room shuts Synapse ("localhost") out.
s, j = call(MY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.server_acl", {
    "allow": ["*"], "deny": [SY_NAME.split(":")[0]], "allow_ip_literals": True}, mt)
check(s == 200, f"alice denies Synapse's server name in her room ({s} {j})")
deadline, acl = time.monotonic() + 20, None
while time.monotonic() < deadline:
    s, acl = call(SY, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.server_acl", None, st)
    if s == 200:
        break
    time.sleep(0.3)
check(s == 200, f"the ACL reaches Synapse ({s} {acl})")
call(SY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/acl1", {"msgtype": "m.text", "body": "after the acl"}, st)
check(not sees(MY, mt, room, "after the acl", seconds=6), "Myelin refuses events from the denied server")
put_event(MY, mt, room, "m.room.message", {"msgtype": "m.text", "body": "still talking"}, "acl2")
print("all checks passed")
print(f"{PASSED} passed, 0 failed")
