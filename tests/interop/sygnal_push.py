"""Push notifications from Myelin through Sygnal, the reference push gateway,
to a phone's push service (issue #20 §3).

Sygnal 0.15.1 runs with its webpush pushkin (no Apple or Google service
needed: a Web Push subscription names its own endpoint). This script plays
the browser and its push service: it makes the subscription's P-256 key pair
and auth secret, and runs the endpoint on loopback, which records each
delivery, checks Sygnal's VAPID signature and decrypts the payload (RFC 8291
`aes128gcm`, with http_ece) to see what reached the phone.

Against a running Myelin that may reach loopback (`ip_range_allow`): bob's
pusher points at Sygnal, alice invites him and chats; each push must carry
the right room, event, sender and counts (only ids with `format:
event_id_only`), and a subscription the endpoint answers 410 Gone is
`rejected` by Sygnal, so Myelin removes that pusher.

Usage: python sygnal_push.py MYELIN_CLIENT_URL   (the sygnal venv's python)
Exits 0 when every check passed; prints each check.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from checks import all_passed, check, register
from client_http import call

# py_vapid 1.9.1 passes the curve class where cryptography 42 wants an instance.
warnings.filterwarnings("ignore", message="Curve argument must be an instance")

MY = sys.argv[1]
APP_ID = "org.myelin.test.web"
CONTACT = "push-admin@example.org"
q = urllib.parse.quote


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Subscription:
    """A browser's Web Push subscription: `pushkey` is its p256dh key."""

    def __init__(self, endpoint):
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.pushkey = b64url(point)
        self.auth = os.urandom(16)
        self.endpoint = endpoint

    def decrypt(self, body):
        return json.loads(http_ece.decrypt(body, private_key=self.private_key,
                                           auth_secret=self.auth, version="aes128gcm"))


class PushService:
    """The push service on loopback: `/push/<name>` answers 201 and records,
    `/push/gone` answers 410 Gone (an expired subscription)."""

    def __init__(self):
        self.received = []
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with service.lock:
                    service.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(410 if self.path == "/push/gone" else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, path, cond, seconds=20):
        """The first delivery to `path` whose decrypted payload meets `cond`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                got = [r for r in self.received if r["path"] == path]
            for r in got:
                if cond(r):
                    return r
            time.sleep(0.1)
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sygnal(work, vapid_key_file):
    """Sygnal on a loopback port with one webpush app; its log in `work`."""
    port = free_port()
    config = {
        "log": {"setup": {
            "version": 1,
            "formatters": {"normal": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "normal",
                                  "filename": os.path.join(work, "sygnal.log")}},
            "root": {"handlers": ["file"], "level": "INFO"},
            "disable_existing_loggers": False,
        }},
        "http": {"bind_addresses": ["127.0.0.1"], "port": port},
        "apps": {APP_ID: {
            "type": "webpush",
            "vapid_private_key": vapid_key_file,
            "vapid_contact_email": CONTACT,
            # An air-gapped site lists its own push service here.
            "allowed_endpoints": ["127.0.0.1:*"],
        }},
    }
    conf = os.path.join(work, "sygnal.yaml")
    with open(conf, "w") as f:
        json.dump(config, f)  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "all_proxy")}
    env["SYGNAL_CONF"] = conf
    out = open(os.path.join(work, "sygnal.out"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "sygnal.sygnal"], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    return proc, None


def show_logs(work):
    for name in ("sygnal.out", "sygnal.log"):
        path = os.path.join(work, name)
        if os.path.exists(path):
            print(f"--- {name} ---\n" + open(path).read()[-6000:], flush=True)


def set_pusher(token, sub, gateway, fmt=None):
    data = {"url": gateway + "/_matrix/push/v1/notify", "endpoint": sub.endpoint, "auth": b64url(sub.auth)}
    if fmt:
        data["format"] = fmt
    return call(MY, "POST", "/_matrix/client/v3/pushers/set", {
        "kind": "http", "app_id": APP_ID, "pushkey": sub.pushkey, "app_display_name": "Web",
        "device_display_name": "browser", "lang": "en", "data": data}, token)


def pushkeys(token):
    s, j = call(MY, "GET", "/_matrix/client/v3/pushers", None, token)
    return [p["pushkey"] for p in j.get("pushers", [])]


def send(token, room, body, txn):
    s, j = call(MY, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": body}, token)
    check(s == 200, f"alice sends {body!r} ({s} {j})")
    return j["event_id"]


def scenario(work):
    service = PushService()
    vapid = Vapid()
    vapid.generate_keys()
    vapid_file = os.path.join(work, "vapid.pem")
    vapid.save_key(vapid_file)
    vapid_pub = b64url(vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    sygnal, gateway = start_sygnal(work, vapid_file)
    try:
        check(gateway is not None, "Sygnal starts with a webpush app and answers /health")
        run(service, gateway, vapid_pub)
    finally:
        sygnal.terminate()
        try:
            sygnal.wait(10)
        except subprocess.TimeoutExpired:
            sygnal.kill()


def run(service, gateway, vapid_pub):
    alice_tok, alice = register(MY, "alice")
    bob_tok, bob = register(MY, "bob")
    s, j = call(MY, "PUT", f"/_matrix/client/v3/profile/{q(alice)}/displayname",
                {"displayname": "Alice Liddell"}, alice_tok)
    check(s == 200, f"alice sets her display name ({s} {j})")

    phone = Subscription(service.base + "/push/bob")
    s, j = set_pusher(bob_tok, phone, gateway)
    check(s == 200, f"bob sets an http pusher pointing at Sygnal ({s} {j})")
    check(pushkeys(bob_tok) == [phone.pushkey], "GET /pushers lists it")

    s, j = call(MY, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "trusted_private_chat", "is_direct": True, "invite": [bob], "name": "Tea party"}, alice_tok)
    check(s == 200, f"alice creates a DM inviting bob ({s} {j})")
    room = j["room_id"]

    def payload(r):
        try:
            return phone.decrypt(r["body"])
        except Exception as e:  # noqa: BLE001 - a payload that does not decrypt fails the check below
            return {"undecryptable": repr(e)}

    r = service.wait_for("/push/bob", lambda r: payload(r).get("membership") == "invite")
    check(r is not None, "the invite reaches bob's push endpoint through Sygnal")
    p = payload(r)
    check(p.get("room_id") == room and p.get("type") == "m.room.member" and p.get("sender") == alice
          and p.get("user_is_target") is True, f"the invite's push names the room, alice and bob as target ({p})")

    # What Sygnal sent: a Web Push request signed with its VAPID key.
    h = {k.lower(): v for k, v in r["headers"].items()}
    check(h.get("content-encoding") == "aes128gcm", f"the payload is RFC 8291 aes128gcm ({h})")
    check(h.get("ttl") == "900", f"with the configured TTL ({h})")
    check(h.get("urgency") == "normal", f"the invite rings, so Myelin sent prio high: Urgency normal, not low ({h})")
    auth = h.get("authorization", "")
    check(auth.startswith("vapid t=") and auth.endswith(",k=" + vapid_pub) and Vapid.verify(auth),
          f"the VAPID signature verifies with Sygnal's key ({auth[:40]}…)")
    claims = json.loads(unb64url(auth[len("vapid t="):].split(",")[0].split(".")[1]))
    check(claims.get("aud") == service.base and claims.get("sub") == "mailto:" + CONTACT,
          f"the VAPID claims name this push service and the contact ({claims})")

    s, j = call(MY, "POST", f"/_matrix/client/v3/join/{q(room)}", {}, bob_tok)
    check(s == 200, f"bob joins ({s} {j})")

    hello = send(alice_tok, room, "hello through Sygnal", "t1")
    r = service.wait_for("/push/bob", lambda r: payload(r).get("event_id") == hello)
    check(r is not None, "alice's message reaches bob's push endpoint")
    p = payload(r)
    check(p.get("room_id") == room, f"it names the room ({p})")
    check(p.get("sender") == alice and p.get("sender_display_name") == "Alice Liddell",
          f"it names the sender and her display name ({p})")
    check(p.get("type") == "m.room.message" and p.get("content", {}).get("body") == "hello through Sygnal",
          f"it carries the message ({p})")
    check(p.get("room_name") == "Tea party", f"it carries the room name ({p})")
    check(p.get("unread") == 1, f"unread is 1 ({p})")
    check(pushkeys(bob_tok) == [phone.pushkey], "Sygnal did not reject the pushkey: the pusher stays")

    # format: event_id_only — Myelin sends ids and counts, nothing of the event.
    s, j = set_pusher(bob_tok, phone, gateway, fmt="event_id_only")
    check(s == 200, f"bob switches his pusher to event_id_only ({s} {j})")
    quiet = send(alice_tok, room, "a secret", "t2")
    r = service.wait_for("/push/bob", lambda r: payload(r).get("event_id") == quiet)
    check(r is not None, "the id-only notification reaches the endpoint")
    p = payload(r)
    check(p.get("room_id") == room and p.get("unread") == 2, f"it names the room, unread is 2 ({p})")
    leaked = {"content", "sender", "sender_display_name", "type", "room_name"} & p.keys()
    check(not leaked, f"nothing of the event reaches the phone ({sorted(leaked)} in {p})")

    # A read receipt brings the count back down.
    s, j = call(MY, "POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(quiet)}", {}, bob_tok)
    check(s == 200, f"bob reads up to it ({s} {j})")
    after = send(alice_tok, room, "after reading", "t3")
    r = service.wait_for("/push/bob", lambda r: payload(r).get("event_id") == after)
    check(r is not None and payload(r).get("unread") == 1,
          f"after bob's receipt unread is 1 again ({r and payload(r)})")

    # An expired subscription: the push service says 410, Sygnal rejects the
    # pushkey, and Myelin removes that pusher (the other one stays).
    expired = Subscription(service.base + "/push/gone")
    s, j = set_pusher(bob_tok, expired, gateway)
    check(s == 200, f"bob adds a second pusher whose subscription expired ({s} {j})")
    check(sorted(pushkeys(bob_tok)) == sorted([phone.pushkey, expired.pushkey]), "both are listed")
    last = send(alice_tok, room, "to both", "t4")
    r = service.wait_for("/push/gone", lambda r: expired.decrypt(r["body"]).get("event_id") == last)
    check(r is not None, "Sygnal tries the expired subscription and gets 410")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and expired.pushkey in pushkeys(bob_tok):
        time.sleep(0.1)
    check(pushkeys(bob_tok) == [phone.pushkey], "Myelin removes the pusher Sygnal rejected; the other stays")
    r = service.wait_for("/push/bob", lambda r: payload(r).get("event_id") == last)
    check(r is not None, "the live subscription still gets the message")
    all_passed()


def main():
    with tempfile.TemporaryDirectory() as work:
        try:
            scenario(work)
        except BaseException:
            show_logs(work)
            raise


if __name__ == "__main__":
    main()
