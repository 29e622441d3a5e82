#!/usr/bin/env bash
# Memory under the send load, per budget: Myelin (release build) started with
# `[storage] memory_mb` = each of BUDGETS, its RSS sampled every second while
# `myelin bench send` runs 32 clients into 1 room and then into 20 rooms; then
# 30 s without load. Reports, per budget: RSS when idle after start, peak RSS
# (the larger of the samples and the kernel's VmHWM), RSS 30 s after the load
# (post-load), the send rates, and, after the server stopped and
# `myelin admin storage --compact` compacted its database, the bytes on disk per
# stored event. Synapse (the interop venv, SQLite) runs the same two send
# scenarios with fewer messages (it is ~100x slower) and its RSS is sampled the
# same way; BASE=path/to/an/older/myelin adds that binary, at its defaults, as a
# before/after comparison.
#
# Usage: benches/memory.sh   (BUDGETS="128 256" MESSAGES=4000 ROOMS20_MESSAGES=3000
#        SYNAPSE_MESSAGES=40 SYNAPSE=1 IDLE_AFTER=30 BASE=)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
budgets="${BUDGETS:-128 256}"
messages="${MESSAGES:-4000}"; messages20="${ROOMS20_MESSAGES:-3000}"
synapse_messages="${SYNAPSE_MESSAGES:-40}"; with_synapse="${SYNAPSE:-1}"
idle_after="${IDLE_AFTER:-30}"; base="${BASE:-}"

source "$root/benches/lib.sh"
rss_of() { grep -m1 VmRSS "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

sampler() { # pid file: one RSS sample (KiB) per second while the process lives
    while kill -0 "$1" 2>/dev/null; do rss_of "$1" >> "$2" || true; sleep 1; done
}
max_of() { sort -n "$1" | tail -1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "| server | budget | idle RSS | peak RSS | post-load RSS ($idle_after s) | post / idle | send 1 room | send 20 rooms | disk per event |"
echo "|---|---|---|---|---|---|---|---|---|"

run_myelin() { # label binary budget(MiB or "default")
    local label="$1" bin="$2" budget="$3" dir="$work/m-$1-$3"
    local mc mf; mc=$(free_port); mf=$(free_port)
    mkdir -p "$dir"
    local budget_env=()
    [ "$budget" != default ] && budget_env=(MYELIN_STORAGE__MEMORY_MB="$budget")
    (cd "$dir" && exec env "${budget_env[@]}" MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
        MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_REGISTRATION__ENABLED=true \
        MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn "$bin" serve >"$dir.log" 2>&1) &
    local pid=$!; pids+=("$pid")
    wait_up "$mc" || { tail -20 "$dir.log" >&2; exit 1; }
    sleep 3
    local idle; idle=$(rss_of "$pid")
    sampler "$pid" "$dir.rss" &
    local one twenty
    one=$("$myelin" bench send --url "http://127.0.0.1:$mc" --rooms 1 --clients 32 --messages "$messages" --json | tail -1)
    twenty=$("$myelin" bench send --url "http://127.0.0.1:$mc" --rooms 20 --clients 32 --messages "$messages20" --json | tail -1)
    sleep "$idle_after"
    local post peak hwm; post=$(rss_of "$pid"); peak=$(max_of "$dir.rss"); hwm=$(hwm_of "$pid")
    [ "$hwm" -gt "$peak" ] && peak=$hwm
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local per_event
    per_event=$(cd "$dir" && "$bin" admin storage --compact --json 2>/dev/null \
        | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%d B (%d events)" % (j["sst_bytes"] // max(j["events"], 1), j["events"]))' \
        || echo "n/a")
    printf '| %s | %s | %d MiB | %d MiB | %d MiB | %.2f | %.0f ev/s | %.0f ev/s | %s |\n' "$label" "$budget" \
        $((idle / 1024)) $((peak / 1024)) $((post / 1024)) "$(awk "BEGIN{print $post/$idle}")" \
        "$(field "$one" events_per_second)" "$(field "$twenty" events_per_second)" "$per_event"
}

for b in $budgets; do run_myelin Myelin "$myelin" "$b"; done
[ -n "$base" ] && run_myelin "Myelin (BASE)" "$base" default

if [ "$with_synapse" = 1 ]; then
    sc=$(free_port); sf=$(free_port); dir="$work/synapse"
    mkdir -p "$dir"
    "$python" tests/interop/synapse_config.py "$dir" "$sc" "$sf" >/dev/null
    (cd "$dir" && exec "$python" -m synapse.app.homeserver -c hs.yaml >/dev/null 2>&1) &
    spid=$!; pids+=("$spid")
    wait_up "$sc"; sleep 3
    idle=$(rss_of "$spid")
    sampler "$spid" "$dir.rss" &
    one=$("$myelin" bench send --url "http://127.0.0.1:$sc" --rooms 1 --clients 32 --messages "$synapse_messages" --json | tail -1)
    twenty=$("$myelin" bench send --url "http://127.0.0.1:$sc" --rooms 20 --clients 32 --messages "$synapse_messages" --json | tail -1)
    sleep "$idle_after"
    post=$(rss_of "$spid"); peak=$(max_of "$dir.rss"); hwm=$(hwm_of "$spid")
    [ "$hwm" -gt "$peak" ] && peak=$hwm
    printf '| Synapse 1.163.2 (%s msgs/client) | — | %d MiB | %d MiB | %d MiB | %.2f | %.0f ev/s | %.0f ev/s | — |\n' \
        "$synapse_messages" $((idle / 1024)) $((peak / 1024)) $((post / 1024)) "$(awk "BEGIN{print $post/$idle}")" \
        "$(field "$one" events_per_second)" "$(field "$twenty" events_per_second)"
fi
echo "Myelin messages per client: $messages (1 room), $messages20 (20 rooms)"
