"""Uploads a user's end-to-end encryption keys to a homeserver the way a
client does, with real ed25519 signatures (signedjson, which Synapse itself
uses): device keys, five signed one-time keys, a fallback key, a master and
a self-signing key (with the password for user-interactive auth) and the
self-signing key's signature of the device. Prints what was uploaded as JSON
for the caller to check against another server later.

Usage: python synapse_keys.py URL TOKEN USER_ID DEVICE_ID PASSWORD
"""

import json
import sys
import urllib.request

import nacl.signing
from signedjson.key import encode_verify_key_base64
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

url, token, user, device, password = sys.argv[1:6]


def call(method, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def key(version):
    k = nacl.signing.SigningKey.generate()
    k.alg, k.version = "ed25519", version
    return k


device_key = key(device)
device_pub = encode_verify_key_base64(device_key.verify_key)
device_keys = sign_json({
    "user_id": user, "device_id": device,
    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
    "keys": {f"curve25519:{device}": encode_base64(b"c" * 32), f"ed25519:{device}": device_pub},
}, user, device_key)
otks = {f"signed_curve25519:OTK{i}": sign_json({"key": encode_base64(bytes([i]) * 32)}, user, device_key) for i in range(5)}
fallback = {"signed_curve25519:FB1": sign_json({"key": encode_base64(b"f" * 32), "fallback": True}, user, device_key)}
status, answer = call("POST", "/_matrix/client/v3/keys/upload",
                      {"device_keys": device_keys, "one_time_keys": otks, "fallback_keys": fallback})
assert status == 200, answer

master, ssk = key("x"), key("x")
master_pub, ssk_pub = encode_verify_key_base64(master.verify_key), encode_verify_key_base64(ssk.verify_key)
master.version, ssk.version = master_pub, ssk_pub
master_key = sign_json({"user_id": user, "usage": ["master"], "keys": {f"ed25519:{master_pub}": master_pub}}, user, device_key)
ssk_key = sign_json({"user_id": user, "usage": ["self_signing"], "keys": {f"ed25519:{ssk_pub}": ssk_pub}}, user, master)
body = {"master_key": master_key, "self_signing_key": ssk_key,
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}}
status, answer = call("POST", "/_matrix/client/v3/keys/device_signing/upload", body)
assert status == 200, answer

signed_device = sign_json(dict(device_keys), user, ssk)
status, answer = call("POST", "/_matrix/client/v3/keys/signatures/upload", {user: {device: signed_device}})
assert status == 200 and not answer.get("failures"), answer
print(json.dumps({"device_ed25519": device_pub, "master": master_pub, "self_signing": ssk_pub,
                  "ssk_signature": signed_device["signatures"][user][f"ed25519:{ssk_pub}"]}))
