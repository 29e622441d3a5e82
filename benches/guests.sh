#!/usr/bin/env bash
# What the guest check costs on the send path. Every authenticated request asks
# whether its user is a guest (api/src/auth.rs `require_user`): an atomic load
# while no guest was ever registered, a RocksDB point read once one was. Two
# Myelin servers (release build, same config) run side by side: "no guest" never
# registered one, "one guest" registered one guest before the load (the senders
# are full accounts either way, so only the check differs). `myelin bench send`
# (32 clients, 1 room) runs against each in turn, ROUNDS times, alternating so
# that machine noise falls on both; reports each round's rates, the median
# ratio, and each server's peak RSS (VmHWM).
#
# Usage: benches/guests.sh   (ROUNDS=3 MESSAGES=3000)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}"; messages="${MESSAGES:-3000}"

source "$root/benches/lib.sh"
hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start() { # label → prints "pid client_port"
    local dir="$work/$1" mc mf; mc=$(free_port); mf=$(free_port)
    mkdir -p "$dir"
    (cd "$dir" && exec env MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
        MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_REGISTRATION__ENABLED=true \
        MYELIN_REGISTRATION__GUESTS=true MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn \
        "$myelin" serve >"$dir.log" 2>&1) &
    echo "$! $mc"
}

read -r plain_pid plain_port < <(start plain); pids+=("$plain_pid")
read -r guest_pid guest_port < <(start guest); pids+=("$guest_pid")
wait_up "$plain_port"; wait_up "$guest_port"
guest=$(curl -sf -X POST -H 'content-type: application/json' -d '{}' \
    "http://127.0.0.1:$guest_port/_matrix/client/v3/register?kind=guest")
[ "$(field "$guest" user_id | cut -c1)" = "@" ] || { echo "guest registration failed: $guest" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "| round | no guest (ev/s) | one guest (ev/s) | one guest / no guest |"
echo "|---|---|---|---|"
ratios=()
for r in $(seq 1 "$rounds"); do
    a=$("$myelin" bench send --url "http://127.0.0.1:$plain_port" --rooms 1 --clients 32 --messages "$messages" --json | tail -1)
    b=$("$myelin" bench send --url "http://127.0.0.1:$guest_port" --rooms 1 --clients 32 --messages "$messages" --json | tail -1)
    ra=$(field "$a" events_per_second); rb=$(field "$b" events_per_second)
    ratio=$(awk "BEGIN{printf \"%.3f\", $rb/$ra}"); ratios+=("$ratio")
    printf '| %d | %.0f | %.0f | %s |\n' "$r" "$ra" "$rb" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo "median ratio (one guest / no guest): $median"
echo "peak RSS: no guest $(( $(hwm_of "$plain_pid") / 1024 )) MiB, one guest $(( $(hwm_of "$guest_pid") / 1024 )) MiB"
echo "messages per client: $messages"
# The servers are not this shell's children (started in a process substitution):
# stop them and wait here, so the work directory is removed after they are gone.
kill "$plain_pid" "$guest_pid" 2>/dev/null || true
while kill -0 "$plain_pid" 2>/dev/null || kill -0 "$guest_pid" 2>/dev/null; do sleep 0.1; done
