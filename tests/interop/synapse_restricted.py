"""Restricted rooms between Myelin and Synapse (issue #27), both ways.

One server's user makes a public room (the "space") and a restricted room of
version 8 (`restricted`), 10 (`knock_restricted`) and 12 (`restricted`) that
allows the space's members, where inviting needs power 50. On the other
server: a member of the space joins through the first server, which names
its user in `join_authorised_via_users_server` and co-signs; messages cross
both ways; a user outside the space is refused with 403 M_FORBIDDEN; and a
second member of the space joins while their server already holds the room
but has nobody who may invite there, so the join must go through the first
server again.

Usage: python synapse_restricted.py MYELIN_CLIENT_URL SYNAPSE_CLIENT_URL MYELIN_SERVER SYNAPSE_SERVER
Exits 0 when every check passed; prints each check.
"""

import sys
import time
import urllib.parse

from checks import all_passed, check, register
from client_http import call

MY, SY, MY_NAME, SY_NAME = sys.argv[1:5]
q = urllib.parse.quote


def receives(base, token, room, text, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s, j = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20", None, token)
        if text in [e.get("content", {}).get("body") for e in j.get("chunk", [])]:
            return True
        time.sleep(0.2)
    return False


def member(base, token, room, user, seconds=30):
    deadline, j = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        s, j = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(user)}", None, token)
        if j.get("membership") == "join":
            return j
        time.sleep(0.2)
    return j


def send(base, token, room, body, txn):
    s, j = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": body}, token)
    check(s == 200, f"send {body!r} ({s} {j})")


def join(base, token, room, server=None):
    path = f"/_matrix/client/v3/join/{q(room)}" + (f"?server_name={q(server)}" if server else "")
    return call(base, "POST", path, {}, token)


def one_way(creator, joiner):
    """`creator` and `joiner` are (name, base, server_name)."""
    cname, cbase, cserver = creator
    jname, jbase, _ = joiner
    ctok, cuser = register(cbase, f"owner-{cname}")
    in1, in1_user = register(jbase, f"member1-{jname}")
    in2, in2_user = register(jbase, f"member2-{jname}")
    out, _ = register(jbase, f"outsider-{jname}")
    s, j = call(cbase, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "space"}, ctok)
    check(s == 200, f"{cname}: the space is created ({s} {j})")
    space = j["room_id"]
    for tok, who in ((in1, "member1"), (in2, "member2")):
        s, j = join(jbase, tok, space, cserver)
        check(s == 200, f"{jname} {who} joins the space on {cname} ({s} {j})")
    for v, rule in (("8", "restricted"), ("10", "knock_restricted"), ("12", "restricted")):
        tag = f"v{v} {rule} {cname}->{jname}"
        s, j = call(cbase, "POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "room_version": v,
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                               "content": {"join_rule": rule,
                                           "allow": [{"type": "m.room_membership", "room_id": space}]}}],
            "power_level_content_override": {"invite": 50},
        }, ctok)
        check(s == 200, f"{tag}: created ({s} {j})")
        room = j["room_id"]
        s, j = join(jbase, in1, room, cserver)
        check(s == 200, f"{tag}: a member of the space joins without an invite ({s} {j})")
        got = member(cbase, ctok, room, in1_user)
        check(got.get("membership") == "join" and got.get("join_authorised_via_users_server") == cuser,
              f"{tag}: {cname} holds the join, authorised through its owner ({got})")
        send(cbase, ctok, room, f"from {cname} {tag}", f"c{v}")
        check(receives(jbase, in1, room, f"from {cname} {tag}"), f"{tag}: {jname} receives {cname}'s message")
        send(jbase, in1, room, f"from {jname} {tag}", f"j{v}")
        check(receives(cbase, ctok, room, f"from {jname} {tag}"), f"{tag}: {cname} receives {jname}'s message")
        s, j = join(jbase, out, room, cserver)
        check(s == 403 and j.get("errcode") == "M_FORBIDDEN", f"{tag}: a user outside the space is refused ({s} {j})")
        s, j = join(jbase, in2, room)
        check(s == 200, f"{tag}: a second member joins while {jname} holds the room but may not invite ({s} {j})")
        got = member(cbase, ctok, room, in2_user)
        check(got.get("join_authorised_via_users_server") == cuser,
              f"{tag}: {cname} authorised that join too ({got})")
        check(receives(jbase, in2, room, f"from {jname} {tag}"), f"{tag}: the second member reads the room")


myelin = ("myelin", MY, MY_NAME)
synapse = ("synapse", SY, SY_NAME)
one_way(synapse, myelin)
one_way(myelin, synapse)
all_passed()
