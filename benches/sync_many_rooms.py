#!/usr/bin/env python3
"""Incremental /sync cost as a user's room count grows, nothing new since the token.

Registers a user on a running homeserver (registration open, rate limits off),
creates rooms with one message each, and times 20 incremental syncs with
timeout=0 at 1, 50, 200 and 500 rooms. Prints the median per size.

Usage: benches/sync_many_rooms.py http://127.0.0.1:8008
"""
import http.client
import json
import sys
import time
import urllib.parse

url = urllib.parse.urlparse(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8008")
conn = http.client.HTTPConnection(url.hostname, url.port)


def call(method, path, token=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    return json.loads(conn.getresponse().read())


name = f"rooms{int(time.time() * 1000)}"
auth = {"username": name, "password": "pass-word-1", "auth": {"type": "m.login.dummy"}}
token = call("POST", "/_matrix/client/v3/register", body=auth)["access_token"]
rooms = []
for size in (1, 50, 200, 500):
    while len(rooms) < size:
        room = call("POST", "/_matrix/client/v3/createRoom", token, {"preset": "private_chat"})["room_id"]
        rooms.append(room)
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/t{len(rooms)}"
        call("PUT", path, token, {"msgtype": "m.text", "body": "hello"})
    since = call("GET", "/_matrix/client/v3/sync?timeout=0", token)["next_batch"]
    times = []
    for _ in range(20):
        start = time.perf_counter()
        call("GET", f"/_matrix/client/v3/sync?timeout=0&since={urllib.parse.quote(since)}", token)
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{size} rooms: incremental sync, nothing new, p50 {times[10] * 1000:.2f} ms")
