"""One Client-Server request for the interop scripts: JSON in, (status, JSON) out."""

import json
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None):
    """Sends `body` as JSON with `token` as bearer; an error answer's body that is
    not JSON comes back as {}."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read() or b"{}"
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {}
