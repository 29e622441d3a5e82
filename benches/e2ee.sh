#!/usr/bin/env bash
# `myelin bench keys` and `myelin bench push` against Myelin (release build) and
# Synapse (the interop venv, SQLite), on loopback, in one run: two servers of
# each kind for the key scenarios (the asking user on A, the users with keys on
# B), one of each for push (the bench plays the push gateway).
#
# Usage: benches/e2ee.sh   (USERS=1000 CLAIM=500 TO_DEVICE=10000 RECEIVERS=100
#        SAMPLES=10 PUSHERS=20 SENDERS=5 MESSAGES=40 to change sizes)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
users="${USERS:-1000}"; claim="${CLAIM:-500}"; to_device="${TO_DEVICE:-10000}"
receivers="${RECEIVERS:-100}"; samples="${SAMPLES:-10}"
pushers="${PUSHERS:-20}"; senders="${SENDERS:-5}"; messages="${MESSAGES:-40}"

source "$root/benches/lib.sh"
sc=$(free_port); sf=$(free_port); mc=$(free_port); mf=$(free_port)
sc2=$(free_port); sf2=$(free_port); mc2=$(free_port); mf2=$(free_port)
gw=$(free_port)

start_synapse() { # dir client_port fed_port
    mkdir -p "$1"
    "$python" tests/interop/synapse_config.py "$1" "$2" "$3" >/dev/null
    (cd "$1" && exec "$python" -m synapse.app.homeserver -c hs.yaml >/dev/null 2>&1) &
    pids+=($!)
}
start_myelin() { # dir client_port fed_port
    mkdir -p "$1"
    (cd "$1" && MYELIN_SERVER_NAME="127.0.0.1:$3" MYELIN_CLIENT__LISTEN="127.0.0.1:$2" \
        MYELIN_FEDERATION__LISTEN="127.0.0.1:$3" MYELIN_FEDERATION__VERIFY_TLS=false \
        MYELIN_FEDERATION__IP_RANGE_ALLOW='["127.0.0.0/8"]' \
        MYELIN_REGISTRATION__ENABLED=true MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 \
        MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn \
        exec "$myelin" serve >/dev/null 2>&1) &
    pids+=($!)
}
start_myelin "$work/myelin" "$mc" "$mf"
start_myelin "$work/myelin2" "$mc2" "$mf2"
start_synapse "$work/synapse" "$sc" "$sf"
start_synapse "$work/synapse2" "$sc2" "$sf2"
wait_up "$mc"; wait_up "$mc2"; wait_up "$sc"; wait_up "$sc2"

# Waits (at most 60 s) until the four servers together use under 5 % of one core.
settle() {
    ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
    for _ in $(seq 1 60); do
        local before; before=$(ticks); sleep 1
        [ $(( $(ticks) - before )) -lt 5 ] && return 0
    done
    echo "servers still busy after 60 s; measuring anyway" >&2
}
keys() { # url_a url_b server_b
    settle
    "$myelin" bench keys --url-a "$1" --url-b "$2" --server-b "$3" --users "$users" --claim "$claim" \
        --to-device "$to_device" --receivers "$receivers" --samples "$samples" --json || true
}
push() { # url senders messages
    settle
    "$myelin" bench push --url "$1" --listen "127.0.0.1:$gw" --receivers "$pushers" --senders "$2" \
        --messages "$3" --json || true
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
mk=$(keys "http://127.0.0.1:$mc" "http://127.0.0.1:$mc2" "127.0.0.1:$mf2")
sk=$(keys "http://127.0.0.1:$sc" "http://127.0.0.1:$sc2" "localhost:$sf2")
# Throughput: S senders at once. Latency: one sender, one message after another
# (the load a phone's notifications see; the throughput run measures queueing).
mp=$(push "http://127.0.0.1:$mc" "$senders" "$messages")
sp=$(push "http://127.0.0.1:$sc" "$senders" "$messages")
ml=$(push "http://127.0.0.1:$mc" 1 "$messages")
sl=$(push "http://127.0.0.1:$sc" 1 "$messages")

hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
# Peak RSS over the whole run (keys and push): A and B of each kind.
echo "peak RSS KiB: Myelin A $(hwm_of "${pids[0]}"), B $(hwm_of "${pids[1]}"); Synapse A $(hwm_of "${pids[2]}"), B $(hwm_of "${pids[3]}")"
python3 - "$users" "$claim" "$mk" "$sk" "$mp" "$sp" "$ml" "$sl" <<'PY'
import json, sys
users, claim = sys.argv[1], sys.argv[2]
def parse(text):
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
mk, sk, mp, sp, ml, sl = (parse(t) for t in sys.argv[3:9])
def cell(r, key, unit, fmt="{:.1f}"):
    return "failed" if r is None else fmt.format(r[key]) + " " + unit
def ratio(m, s, key, higher_is_better=False):
    if not m or not s or not m[key] or not s[key]:
        return "—"
    return f"{(m[key] / s[key]) if higher_is_better else (s[key] / m[key]):.1f}x"
rows = [
    (f"/keys/query of {users} users on the other server, first", mk, sk, "query_first_ms", "ms", False),
    (f"/keys/query of {users} users, p50 of later ones", mk, sk, "query_p50_ms", "ms", False),
    (f"/keys/claim of {claim} devices on the other server, p50", mk, sk, "claim_p50_ms", "ms", False),
    ("to-device across servers: all delivered, messages/s", mk, sk, "to_device_per_second", "msg/s", True),
    ("to-device send-to-/sync latency p50", mk, sk, "to_device_p50_ms", "ms", False),
    ("push notifications delivered, per second (senders at once)", mp, sp, "pushes_per_second", "/s", True),
    ("send-to-gateway latency p50, senders at once", mp, sp, "p50_ms", "ms", False),
    ("send-to-gateway latency p50, one sender", ml, sl, "p50_ms", "ms", False),
    ("send-to-gateway latency p99, one sender", ml, sl, "p99_ms", "ms", False),
]
print("| scenario | Myelin | Synapse 1.163.2 | Myelin better by |")
print("|---|---|---|---|")
for name, m, s, key, unit, up in rows:
    print(f"| {name} | {cell(m, key, unit)} | {cell(s, key, unit)} | {ratio(m, s, key, up)} |")
for name, r in (("Myelin keys", mk), ("Synapse keys", sk)):
    if r:
        print(f"{name}: {r['to_device_delivered']} of {r['to_device_expected']} to-device messages, {r['to_device_duplicates']} duplicates; requests took {r['to_device_send_seconds']:.2f} s of {r['to_device_seconds']:.2f} s")
for name, r in (("Myelin push", mp), ("Synapse push", sp), ("Myelin push, one sender", ml), ("Synapse push, one sender", sl)):
    if r:
        print(f"{name}: {r['delivered']} of {r['expected']} notifications, {r['duplicates']} duplicates")
PY
