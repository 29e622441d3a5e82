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

MY, SY, MY_NAME, SY_NAME = sys.argv[1:5]
q = urllib.parse.quote


def check(cond, what):
    print(("ok: " if cond else "FAILED: ") + what, flush=True)
    if not cond:
        sys.exit(1)


def call(base, method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


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
for i in range(30):
    send(SY, st, room2, f"history {i}", f"h{i}")
s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(room2)}?server_name={q(SY_NAME)}", {}, mt)
check(s == 200, f"alice on Myelin joins it ({s} {j})")
s, j = call(MY, "GET", f"/_matrix/client/v3/rooms/{q(room2)}/state/m.room.name", None, mt)
check(j.get("name") == "on synapse", "Myelin has the room's state")
send(SY, st, room2, "synapse to myelin", "t3")
check(sees(MY, mt, room2, "synapse to myelin"), "alice receives messages in the Synapse room")
send(MY, mt, room2, "myelin to synapse", "t4")
check(sees(SY, st, room2, "myelin to synapse"), "bob receives alice's message in his room")
history, frm = [], None
for _ in range(10):
    path = f"/_matrix/client/v3/rooms/{q(room2)}/messages?dir=b&limit=20" + (f"&from={q(frm)}" if frm else "")
    s, j = call(MY, "GET", path, None, mt)
    history += [e["content"].get("body") for e in j.get("chunk", []) if e.get("type") == "m.room.message"]
    frm = j.get("end")
    if not frm:
        break
check(all(f"history {i}" in history for i in range(30)), f"all 30 earlier messages are backfilled on Myelin ({len(history)} seen)")

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
print("all checks passed")
