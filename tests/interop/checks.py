"""Shared by the scenario scripts: numbered checks that stop at the first
failure, the closing line the Rust side looks for, and registration."""

import sys

from client_http import call

_passed = 0


def check(cond, what):
    """Prints the check; on failure prints the tally and exits 1."""
    global _passed
    print(("ok: " if cond else "FAILED: ") + what, flush=True)
    if not cond:
        print(f"{_passed} passed, 1 failed", flush=True)
        sys.exit(1)
    _passed += 1


def all_passed():
    """The closing line `run_scenario` asserts on."""
    print(f"all checks passed: {_passed} passed, 0 failed", flush=True)


def register(base, name):
    """Registers `name` on `base` (dummy auth); returns (access token, user id)."""
    s, j = call(base, "POST", "/_matrix/client/v3/register",
                {"username": name, "password": "pw-pw-pw-1", "auth": {"type": "m.login.dummy"}})
    check(s == 200, f"{name} registers on {base} ({s} {j})")
    return j["access_token"], j["user_id"]
