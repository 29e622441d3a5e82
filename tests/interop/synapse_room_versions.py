"""Rooms of every stable version (1-12) between Myelin and Synapse (issue #27).

For each version, both ways: one server's user creates the room and writes 50
messages of history, the other server's user joins it, each side sends a
message the other receives, each side changes state the other sees (a topic
from the creator, a per-room display name from the joiner), and the joiner's
server backfills all 50 earlier messages, each once; then the creator
upgrades the room to the next version (12 to 1) and the joiner follows the
tombstone into it.

Usage: python synapse_room_versions.py MYELIN_CLIENT_URL SYNAPSE_CLIENT_URL MYELIN_SERVER SYNAPSE_SERVER
Exits 0 when every check passed; prints each check.
"""

import sys
import time
import urllib.parse

from checks import all_passed, check, register
from client_http import call

MY, SY, MY_NAME, SY_NAME = sys.argv[1:5]
q = urllib.parse.quote
HISTORY = 50


def send(base, token, room, body, txn):
    s, j = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": body}, token)
    check(s == 200, f"send {body!r} ({s} {j})")


def latest_bodies(base, token, room):
    s, j = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20", None, token)
    return [e.get("content", {}).get("body") for e in j.get("chunk", [])]


def receives(base, token, room, text, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in latest_bodies(base, token, room):
            return True
        time.sleep(0.2)
    return False


def state_becomes(base, token, room, kind, key, field, want, seconds=30):
    deadline, got = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        s, j = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/{kind}/{q(key)}", None, token)
        got = j.get(field)
        if got == want:
            return True, got
        time.sleep(0.2)
    return False, got


def history(base, token, room):
    seen, frm = [], None
    for _ in range(20):
        path = f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=50" + (f"&from={q(frm)}" if frm else "")
        s, j = call(base, "GET", path, None, token)
        seen += [e["content"].get("body") for e in j.get("chunk", []) if e.get("type") == "m.room.message"]
        frm = j.get("end")
        if not frm or not j.get("chunk"):
            break
    return seen


def one_way(v, creator, joiner):
    """`creator` and `joiner` are (name, base, token, user_id, server_name)."""
    cname, cbase, ctok, cuser, cserver = creator
    jname, jbase, jtok, juser, _ = joiner
    tag = f"v{v} {cname}->{jname}"
    s, j = call(cbase, "POST", "/_matrix/client/v3/createRoom",
                {"preset": "public_chat", "room_version": str(v), "name": f"room {tag}"}, ctok)
    check(s == 200, f"{tag}: created on {cname} ({s} {j})")
    room = j["room_id"]
    for i in range(HISTORY):
        s, j = call(cbase, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/h{v}-{i}",
                    {"msgtype": "m.text", "body": f"history {i}"}, ctok)
        if s != 200:
            check(False, f"{tag}: history message {i} ({s} {j})")
    s, j = call(jbase, "POST", f"/_matrix/client/v3/join/{q(room)}?server_name={q(cserver)}", {}, jtok)
    check(s == 200, f"{tag}: {jname} joins ({s} {j})")
    s, j = call(jbase, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.create", None, jtok)
    check(j.get("room_version") == str(v), f"{tag}: {jname} holds the create event of version {v} ({j})")
    send(cbase, ctok, room, f"hello from {cname} {tag}", f"a{v}")
    check(receives(jbase, jtok, room, f"hello from {cname} {tag}"), f"{tag}: {jname} receives {cname}'s message")
    send(jbase, jtok, room, f"hello from {jname} {tag}", f"b{v}")
    check(receives(cbase, ctok, room, f"hello from {jname} {tag}"), f"{tag}: {cname} receives {jname}'s message")
    s, j = call(cbase, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.topic/", {"topic": f"t {tag}"}, ctok)
    check(s == 200, f"{tag}: {cname} sets the topic ({s} {j})")
    ok, got = state_becomes(jbase, jtok, room, "m.room.topic", "", "topic", f"t {tag}")
    check(ok, f"{tag}: {jname} sees the topic ({got})")
    s, j = call(jbase, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(juser)}",
                {"membership": "join", "displayname": f"n {tag}"}, jtok)
    check(s == 200, f"{tag}: {jname} sets a room display name ({s} {j})")
    ok, got = state_becomes(cbase, ctok, room, "m.room.member", juser, "displayname", f"n {tag}")
    check(ok, f"{tag}: {cname} sees it ({got})")
    seen = history(jbase, jtok, room)
    missing = [i for i in range(HISTORY) if f"history {i}" not in seen]
    check(not missing, f"{tag}: {jname} backfills the {HISTORY} earlier messages (missing {missing[:10]})")
    check(len([h for h in seen if h and h.startswith("history ")]) == HISTORY, f"{tag}: each exactly once")
    nxt = v % 12 + 1
    s, j = call(cbase, "POST", f"/_matrix/client/v3/rooms/{q(room)}/upgrade", {"new_version": str(nxt)}, ctok)
    check(s == 200, f"{tag}: {cname} upgrades the room to v{nxt} ({s} {j})")
    new_room = j["replacement_room"]
    ok, got = state_becomes(jbase, jtok, room, "m.room.tombstone", "", "replacement_room", new_room)
    check(ok, f"{tag}: {jname} sees the tombstone ({got})")
    s, j = call(jbase, "POST", f"/_matrix/client/v3/join/{q(new_room)}?server_name={q(cserver)}", {}, jtok)
    check(s == 200, f"{tag}: {jname} follows it to v{nxt} ({s} {j})")
    s, j = call(jbase, "GET", f"/_matrix/client/v3/rooms/{q(new_room)}/state/m.room.create", None, jtok)
    check(j.get("room_version") == str(nxt) and j.get("predecessor", {}).get("room_id") == room,
          f"{tag}: the new room is v{nxt} and names its predecessor ({j})")
    ok, got = state_becomes(jbase, jtok, new_room, "m.room.topic", "", "topic", f"t {tag}")
    check(ok, f"{tag}: the topic came along ({got})")
    send(cbase, ctok, new_room, f"upgraded {tag}", f"u{v}")
    check(receives(jbase, jtok, new_room, f"upgraded {tag}"), f"{tag}: {jname} receives in the upgraded room")


mt, mu = register(MY, "alice")
st, su = register(SY, "bob")
myelin = ("myelin", MY, mt, mu, MY_NAME)
synapse = ("synapse", SY, st, su, SY_NAME)
for v in range(1, 13):
    one_way(v, synapse, myelin)
    one_way(v, myelin, synapse)
all_passed()
