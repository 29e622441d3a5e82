"""The same Client-Server requests against Myelin and against Synapse, each on its
own: /sync state vs timeline, inline filters, transaction ids, /messages from a
sync token, presence, guests, tags, ignored users, a kick before the first sync,
current state in a private-history timeline, and server ACL content. Each
scenario reduces what a client observes (status codes, errcodes, which events
arrive where, booleans about shape) to a value free of ids and timestamps; the
two servers must give the same value.

Usage: python sync_side_by_side.py MYELIN_CLIENT_URL SYNAPSE_CLIENT_URL
Exits 0 when every scenario matched; prints each scenario's value per server.
"""

import json
import sys
import time
import urllib.parse

from client_http import call

SERVERS = {"myelin": sys.argv[1], "synapse": sys.argv[2]}
q = urllib.parse.quote


def ok(base, method, path, body=None, token=None):
    s, j = call(base, method, path, body, token)
    if s != 200:
        raise AssertionError(f"{method} {path} on {base}: {s} {j}")
    return j


class User:
    def __init__(self, base, name):
        self.base = base
        j = ok(base, "POST", "/_matrix/client/v3/register",
               {"username": name, "password": "pw-pw-pw-1", "auth": {"type": "m.login.dummy"}})
        self.token, self.user_id, self.device = j["access_token"], j["user_id"], j["device_id"]

    def req(self, method, path, body=None):
        return call(self.base, method, path, body, self.token)

    def ok(self, method, path, body=None):
        return ok(self.base, method, path, body, self.token)

    def create(self, body):
        return self.ok("POST", "/_matrix/client/v3/createRoom", body)["room_id"]

    def join(self, room):
        return self.ok("POST", f"/_matrix/client/v3/join/{q(room)}", {})

    def send(self, room, text, txn=None):
        txn = txn or f"t{time.monotonic_ns()}"
        return self.ok("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                       {"msgtype": "m.text", "body": text})["event_id"]

    def state(self, room, kind, content, key=""):
        return self.ok("PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/{kind}/{q(key)}", content)

    def sync(self, since=None, filt=None, timeout=0, extra=""):
        path = f"/_matrix/client/v3/sync?timeout={timeout}{extra}"
        if since:
            path += "&since=" + q(since)
        if filt is not None:
            path += "&filter=" + q(json.dumps(filt))
        return self.ok("GET", path)


def bodies(events):
    return [e["content"].get("body") for e in events if e.get("type") == "m.room.message"]


def timeline(sync, room, section="join"):
    return sync.get("rooms", {}).get(section, {}).get(room, {}).get("timeline", {})


def state_events(sync, room, section="join"):
    return sync.get("rooms", {}).get(section, {}).get(room, {}).get("state", {}).get("events", [])


def state_vs_timeline(base, p):
    alice = User(base, p + "alice")
    room = alice.create({"preset": "public_chat"})
    alice.state(room, "m.room.topic", {"topic": "one"})
    for body in ["m1", "m2", "m3"]:
        alice.send(room, body)
    filt = {"room": {"timeline": {"limit": 2}}}
    first = alice.sync(filt=filt)
    tl, st = timeline(first, room), state_events(first, room)
    ids = {e["event_id"] for e in tl.get("events", [])}
    out = {
        "timeline": bodies(tl.get("events", [])),
        "limited": tl.get("limited"),
        "prev_batch": isinstance(tl.get("prev_batch"), str),
        "state_repeats_timeline": any(e["event_id"] in ids for e in st),
        "topic_in_state": [e["content"].get("topic") for e in st if e["type"] == "m.room.topic"],
    }
    alice.state(room, "m.room.topic", {"topic": "two"})
    alice.send(room, "m4")
    nxt = alice.sync(since=first["next_batch"], filt=filt)
    tl2 = timeline(nxt, room)
    out["incremental_timeline"] = [(e["type"], e["content"].get("body", e["content"].get("topic")))
                                   for e in tl2.get("events", [])]
    out["incremental_limited"] = tl2.get("limited")
    out["incremental_state"] = [e["type"] for e in state_events(nxt, room)]
    # A gap wider than the limit: limited, with only the state changed in the gap.
    alice.state(room, "m.room.topic", {"topic": "three"})
    for body in ["m5", "m6", "m7"]:
        alice.send(room, body)
    gap = alice.sync(since=nxt["next_batch"], filt=filt)
    tl3 = timeline(gap, room)
    out["gap"] = {"timeline": bodies(tl3.get("events", [])), "limited": tl3.get("limited"),
                  "state": [(e["type"], e["content"].get("topic")) for e in state_events(gap, room)]}
    return out


def filters(base, p):
    alice = User(base, p + "alice")
    room = alice.create({"preset": "public_chat"})
    alice.send(room, "hello")
    only = alice.sync(filt={"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}}})
    without = alice.sync(filt={"room": {"timeline": {"limit": 10, "not_types": ["m.room.message"]}}})
    statuses = {}
    for name, f in {"lazy_string": {"room": {"state": {"lazy_load_members": "yes"}}},
                    "room_string": {"room": "x"},
                    "limit_string": {"room": {"timeline": {"limit": "ten"}}}}.items():
        s, _ = alice.req("GET", "/_matrix/client/v3/sync?timeout=0&filter=" + q(json.dumps(f)))
        statuses[name] = s
    s, _ = alice.req("GET", "/_matrix/client/v3/sync?timeout=0&full_state=maybe")
    statuses["full_state_maybe"] = s
    return {
        "types": sorted({e["type"] for e in timeline(only, room).get("events", [])}),
        "not_types_has_message": any(e["type"] == "m.room.message" for e in timeline(without, room).get("events", [])),
        "statuses": statuses,
    }


def transaction_ids(base, p):
    alice = User(base, p + "alice")
    j = ok(base, "POST", "/_matrix/client/v3/login",
           {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
            "password": "pw-pw-pw-1"})
    other_token = j["access_token"]
    room = alice.create({})
    since_a = alice.sync()["next_batch"]
    since_b = ok(base, "GET", "/_matrix/client/v3/sync?timeout=0", None, other_token)["next_batch"]
    alice.send(room, "mine", txn="my-txn-1")
    a = alice.sync(since=since_a)
    b = ok(base, "GET", f"/_matrix/client/v3/sync?timeout=0&since={q(since_b)}", None, other_token)

    def txn_of(sync):
        return [e.get("unsigned", {}).get("transaction_id") for e in timeline(sync, room).get("events", [])
                if e.get("type") == "m.room.message"]
    return {"sending_device": txn_of(a), "other_device": txn_of(b)}


def messages_from_sync_token(base, p):
    alice = User(base, p + "alice")
    room = alice.create({})
    for body in ["one", "two", "three"]:
        alice.send(room, body)
    since = alice.sync()["next_batch"]
    for body in ["four", "five"]:
        alice.send(room, body)
    back = alice.ok("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&from={q(since)}&limit=2")
    fwd = alice.ok("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=f&from={q(since)}&limit=10")
    return {"back": bodies(back["chunk"]), "back_has_end": isinstance(back.get("end"), str),
            "forward": bodies(fwd["chunk"])}


def presence(base, p):
    alice, bob = User(base, p + "alice"), User(base, p + "bob")
    room = alice.create({"preset": "public_chat"})
    bob.join(room)
    bob.ok("PUT", f"/_matrix/client/v3/presence/{q(bob.user_id)}/status",
           {"presence": "unavailable", "status_msg": "away"})
    seen, since = {}, None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen) < 2:
        j = alice.sync(since=since, timeout=1000 if since else 0)
        since = j["next_batch"]
        for e in j.get("presence", {}).get("events", []):
            who = "self" if e["sender"] == alice.user_id else "bob" if e["sender"] == bob.user_id else "other"
            seen[who] = (e["content"].get("presence"), e["content"].get("status_msg"))
    got = bob.ok("GET", f"/_matrix/client/v3/presence/{q(bob.user_id)}/status")
    s, _ = alice.req("PUT", f"/_matrix/client/v3/presence/{q(alice.user_id)}/status", {"presence": "busy"})
    return {"in_sync": seen, "get": (got.get("presence"), got.get("status_msg")), "bad_state": s}


def guests(base, p):
    alice = User(base, p + "alice")
    closed = alice.create({"preset": "public_chat"})
    open_room = alice.create({"preset": "public_chat", "initial_state": [
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]})
    s, j = call(base, "POST", "/_matrix/client/v3/register?kind=guest", {})
    if s != 200:
        return {"register": s}
    token = j["access_token"]
    out = {"register": s, "whoami_is_guest": ok(base, "GET", "/_matrix/client/v3/account/whoami", None, token).get("is_guest")}
    s, j = call(base, "POST", "/_matrix/client/v3/createRoom", {}, token)
    out["create_room"] = (s, j.get("errcode"))
    s, j = call(base, "POST", f"/_matrix/client/v3/join/{q(closed)}", {}, token)
    out["join_without_guest_access"] = (s, j.get("errcode"))
    s, j = call(base, "POST", f"/_matrix/client/v3/join/{q(open_room)}", {}, token)
    out["join_can_join"] = s
    s, j = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(open_room)}/send/m.room.message/g1",
                {"msgtype": "m.text", "body": "guest"}, token)
    out["send"] = s
    s, j = call(base, "POST", "/_matrix/client/v3/register?kind=robot", {})
    out["unknown_kind"] = (s, j.get("errcode"))
    return out


def tags(base, p):
    alice = User(base, p + "alice")
    room = alice.create({})
    path = f"/_matrix/client/v3/user/{q(alice.user_id)}/rooms/{q(room)}/tags"
    alice.ok("PUT", path + "/u.work", {"order": 0.5})
    alice.ok("PUT", path + "/m.favourite", {})
    after_put = alice.ok("GET", path)
    alice.ok("DELETE", path + "/u.work")
    after_delete = alice.ok("GET", path)
    sync = alice.sync()
    tag_events = [e for e in sync.get("rooms", {}).get("join", {}).get(room, {})
                  .get("account_data", {}).get("events", []) if e["type"] == "m.tag"]
    return {"after_put": after_put, "after_delete": after_delete,
            "in_sync": [e["content"] for e in tag_events]}


def ignored_users(base, p):
    alice, bob, carol = User(base, p + "alice"), User(base, p + "bob"), User(base, p + "carol")
    room = alice.create({"preset": "public_chat"})
    bob.join(room)
    carol.join(room)
    alice.ok("PUT", f"/_matrix/client/v3/user/{q(alice.user_id)}/account_data/m.ignored_user_list",
             {"ignored_users": {bob.user_id: {}}})
    bob.send(room, "from bob")
    carol.send(room, "from carol")
    elsewhere = bob.create({"invite": [alice.user_id]})
    sync = alice.sync()
    members = [e["state_key"] == bob.user_id for e in state_events(sync, room) + timeline(sync, room).get("events", [])
               if e["type"] == "m.room.member"]
    page = alice.ok("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20")
    return {"timeline": bodies(timeline(sync, room).get("events", [])),
            "bob_member_still_shown": any(members),
            "invite_shown": elsewhere in sync.get("rooms", {}).get("invite", {}),
            "messages": bodies(page["chunk"])}


def kicked_before_first_sync(base, p):
    alice, bob = User(base, p + "alice"), User(base, p + "bob")
    room = alice.create({"preset": "private_chat"})
    alice.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    bob.join(room)
    alice.send(room, "before")
    alice.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/kick", {"user_id": bob.user_id, "reason": "test"})
    alice.send(room, "after")
    sync = bob.sync()
    left = sync.get("rooms", {}).get("leave", {})
    events = timeline(sync, room, "leave").get("events", [])
    kicks = [e["content"].get("membership") for e in events
             if e["type"] == "m.room.member" and e.get("state_key") == bob.user_id]
    return {"in_leave": room in left, "join_has_it": room in sync.get("rooms", {}).get("join", {}),
            "last_membership_in_timeline": kicks[-1:] if kicks else None,
            "sees_after": "after" in bodies(events)}


def private_history(base, p):
    creator, syncer, invitee = User(base, p + "creator"), User(base, p + "syncer"), User(base, p + "invitee")
    room = creator.create({"preset": "public_chat"})
    syncer.join(room)
    creator.state(room, "m.room.history_visibility", {"history_visibility": "joined"})
    creator.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": invitee.user_id})
    since = syncer.sync()["next_batch"]
    syncer.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/leave", {})
    invitee.join(room)
    for n in range(15):
        creator.send(room, f"hidden {n}")
    syncer.join(room)
    sync = syncer.sync(since=since)
    events = timeline(sync, room).get("events", [])
    return {"invitee_join_in_timeline": any(e["type"] == "m.room.member" and e.get("state_key") == invitee.user_id
                                            and e["content"].get("membership") == "join" for e in events),
            "hidden_messages_shown": bodies(events)}


def server_acl(base, p):
    alice = User(base, p + "alice")
    room = alice.create({})
    s, _ = alice.req("PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.server_acl/",
                     {"allow": ["*"], "deny": ["1.2.3.4", "*.evil.example", "ev?l.example"],
                      "allow_ip_literals": True})
    got = alice.ok("GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.server_acl/")
    return {"put": s, "read_back": got}


SCENARIOS = [state_vs_timeline, filters, transaction_ids, messages_from_sync_token, presence, guests, tags,
             ignored_users, kicked_before_first_sync, private_history, server_acl]

failed = 0
for n, scenario in enumerate(SCENARIOS):
    values = {}
    for name, base in SERVERS.items():
        try:
            values[name] = scenario(base, f"s{n}")
        except Exception as e:  # a scenario that breaks on one server is a difference too
            values[name] = f"error: {e}"
    same = values["myelin"] == values["synapse"]
    failed += not same
    print(("same: " if same else "DIFFERENT: ") + scenario.__name__, flush=True)
    for name, value in values.items():
        print(f"    {name}: {json.dumps(value, sort_keys=True)}", flush=True)
print(f"{len(SCENARIOS) - failed} same, {failed} different", flush=True)
sys.exit(1 if failed else 0)
