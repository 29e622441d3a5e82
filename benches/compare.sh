#!/usr/bin/env bash
# Runs the same `myelin bench` scenarios against Myelin (release build) and
# Synapse (the interop venv, SQLite), started side by side on loopback, and
# prints one table with the ratio of each scenario measured in this run.
#
# Usage: benches/compare.sh  (LINES=3000 CLIENTS=20 MESSAGES=100 FED_MESSAGES=300 FED_SENDERS=10 MEMBERS=2000 to change sizes)
#
# MESSAGES is per client: 20 x 100 = 2,000 events per send row. (It was 25
# until 2026-11-26: Myelin sent those 500 in 30-50 ms, a window this shared
# machine's scheduling noise moved by a third from run to run.)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
lines="${LINES:-3000}"
clients="${CLIENTS:-20}"
messages="${MESSAGES:-100}"

source "$root/benches/lib.sh"
sc=$(free_port); sf=$(free_port); mc=$(free_port); mf=$(free_port)
# A second server of each kind, for the federation scenario.
sc2=$(free_port); sf2=$(free_port); mc2=$(free_port); mf2=$(free_port)

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
        MYELIN_REGISTRATION__ENABLED=true MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn \
        exec "$myelin" serve >/dev/null 2>&1) &
    pids+=($!)
}
start_synapse "$work/synapse" "$sc" "$sf"
start_myelin "$work/myelin" "$mc" "$mf"
start_synapse "$work/synapse2" "$sc2" "$sf2"
start_myelin "$work/myelin2" "$mc2" "$mf2"

wait_up "$mc"; wait_up "$sc"; wait_up "$mc2"; wait_up "$sc2"

# Waits (at most 60 s) until the four servers together use under 5 % of one
# core over a second: a freshly started Synapse keeps working for a while, and
# a server still busy with the previous scenario would tax the next one.
settle() {
    ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
    for _ in $(seq 1 60); do
        local before; before=$(ticks); sleep 1
        [ $(( $(ticks) - before )) -lt 5 ] && return 0
    done
    echo "servers still busy after 60 s; measuring anyway" >&2
}

run() { settle; "$myelin" bench "$@" --json; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# RocksDB's write-ahead log (`*.log`) is left out: Myelin pre-sizes it to a
# fixed 64 MiB at start-up (`storage.wal_mb`) and reuses it, so it does not
# grow with events; the data is counted once the server has stopped and
# flushed it into table files.
bytes_of() { du -sb --exclude='*.log' "$1" | cut -f1; }
hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
rss_of() { ps -o rss= -p "$1" 2>/dev/null | xargs; }
my_before=$(bytes_of "$work/myelin"); sy_before=$(bytes_of "$work/synapse")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo
echo "| scenario | Myelin | Synapse 1.163.2 | ratio |"
echo "|---|---|---|---|"
for rooms in 1 20; do
    m=$(run send --url "http://127.0.0.1:$mc" --rooms "$rooms" --clients "$clients" --messages "$messages")
    s=$(run send --url "http://127.0.0.1:$sc" --rooms "$rooms" --clients "$clients" --messages "$messages")
    mr=$(field "$m" events_per_second); sr=$(field "$s" events_per_second)
    python3 - "$rooms" "$clients" "$mr" "$sr" "$(field "$m" p50_ms)" "$(field "$s" p50_ms)" <<'PY'
import sys
rooms, clients, mr, sr, mp, sp = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"| send throughput, {rooms} room(s), {clients} clients | {mr:.0f} ev/s (p50 {mp:.1f} ms) | {sr:.0f} ev/s (p50 {sp:.1f} ms) | {mr / sr:.1f}x |")
PY
done
m=$(run fanout --url "http://127.0.0.1:$mc" --receivers "$clients" --messages 20)
s=$(run fanout --url "http://127.0.0.1:$sc" --receivers "$clients" --messages 20)
python3 - "$clients" "$(field "$m" p50_ms)" "$(field "$s" p50_ms)" "$(field "$m" p99_ms)" "$(field "$s" p99_ms)" <<'PY'
import sys
n, mp, sp, m99, s99 = sys.argv[1], *map(float, sys.argv[2:])
print(f"| sync fan-out, 1 sender, {n} receivers, p50 (p99) | {mp:.1f} ms ({m99:.1f}) | {sp:.1f} ms ({s99:.1f}) | {mp / sp:.3f} (lower is better) |")
PY
fed="${FED_MESSAGES:-300}"
# One sender sending each message once the previous is acknowledged, then
# FED_SENDERS connections at once (a burst that does not wait on one client).
for senders in 1 "${FED_SENDERS:-10}"; do
# A run where not every message arrives (within the bench's 300 s) still
# prints its report and exits 1: the row says how many arrived.
m=$(run federation --url-a "http://127.0.0.1:$mc" --url-b "http://127.0.0.1:$mc2" --server-a "127.0.0.1:$mf" --messages "$fed" --senders "$senders") || true
s=$(run federation --url-a "http://127.0.0.1:$sc" --url-b "http://127.0.0.1:$sc2" --server-a "localhost:$sf" --messages "$fed" --senders "$senders") || true
python3 - "$fed" "$senders" "$m" "$s" <<'PY'
import json, sys
n, k = sys.argv[1], sys.argv[2]
def parse(text):
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
m, s = parse(sys.argv[3]), parse(sys.argv[4])
def cell(r):
    if r is None:
        return "failed"
    lost = "" if r["received"] == r["sent"] else f", only {r['received']} of {r['sent']} arrived ({r.get('only_in_history', 0)} more stored but never in /sync)"
    return f"{r['messages_per_second']:.0f} msgs/s (p50 {r['p50_ms']:.0f} ms{lost})"
ratio = f"{m['messages_per_second'] / s['messages_per_second']:.1f}x" if m and s and s["messages_per_second"] else "—"
print(f"| federation burst of {n} from {k} sender(s), A to B end to end | {cell(m)} | {cell(s)} | {ratio} |")
PY
done
m=$(run script --url "http://127.0.0.1:$mc" --lines "$lines")
s=$(run script --url "http://127.0.0.1:$sc" --lines "$lines")
python3 - "$lines" "$(field "$m" seconds)" "$(field "$s" seconds)" <<'PY'
import sys
lines, m, s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
print(f"| sequential script, {lines} lines | {m:.2f} s | {s:.2f} s | {s / m:.1f}x faster |")
PY
# Last: the join leaves the joining Synapse busy in the background for a while
# (it keeps working on the 2,000-member room after answering), which would tax
# whatever runs next on these 2 cores.
members="${MEMBERS:-2000}"
m=$(run join --url-a "http://127.0.0.1:$mc" --url-b "http://127.0.0.1:$mc2" --server-a "127.0.0.1:$mf" --members "$members")
s=$(run join --url-a "http://127.0.0.1:$sc" --url-b "http://127.0.0.1:$sc2" --server-a "localhost:$sf" --members "$members")
python3 - "$members" "$(field "$m" seconds)" "$(field "$s" seconds)" <<'PY'
import sys
n, m, s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
print(f"| join over federation, {n}-member room, until all listed | {m:.2f} s | {s:.2f} s | {s / m:.1f}x faster |")
PY
# Disk: growth of each first server's data folder over every scenario above,
# per event those scenarios sent to it (send ×2, fan-out, federation sender,
# the join scenario's member joins, script). Accounts and rooms count too.
sent=$((2 * clients * messages + 20 + 2 * fed + lines + members))
mh=$(hwm_of "${pids[1]}"); sh=$(hwm_of "${pids[0]}")
rss_now="RSS now: Myelin $(rss_of "${pids[1]}") KiB, Synapse $(rss_of "${pids[0]}") KiB"
# Both first servers stop cleanly (memtables and SQLite's WAL reach their files).
kill -TERM "${pids[0]}" "${pids[1]}" 2>/dev/null || true
for _ in $(seq 1 300); do
    kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null || break
    sleep 0.1
done
my_after=$(bytes_of "$work/myelin"); sy_after=$(bytes_of "$work/synapse")
python3 - "$sent" "$my_before" "$my_after" "$sy_before" "$sy_after" <<'PY'
import sys
n, mb, ma, sb, sa = map(int, sys.argv[1:])
m, s = (ma - mb) / n, (sa - sb) / n
print(f"| disk growth per event sent ({n} events) | {m:.0f} B | {s:.0f} B | {m / s:.2f} (lower is better) |")
PY
python3 - "$mh" "$sh" <<'PY'
import sys
m, s = map(int, sys.argv[1:])
print(f"| peak RSS over the runs | {m / 1024:.0f} MiB | {s / 1024:.0f} MiB | {m / s:.2f} (lower is better) |")
PY
echo
echo "$rss_now"
