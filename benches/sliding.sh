#!/usr/bin/env bash
# `myelin bench sliding` against Myelin (release build) and Synapse (the interop
# venv, SQLite), on loopback, in one run: simplified sliding sync (MSC4186) for
# one account in ROOMS rooms, BIG of them with MEMBERS other users: the first
# answer of a new connection for a WINDOW-room window (Element X's room-list
# request) and the answer after one new message, p50/p99; plus each server's RSS
# after the set-up and after the 2 x SAMPLES + 1 connections (memory per connection), and
# each server's peak RSS over the run.
#
# Usage: benches/sliding.sh   (ROOMS=1000 BIG=500 MEMBERS=100 WINDOW=20 SAMPLES=50;
#        SYNAPSE=0 to measure Myelin alone)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rooms="${ROOMS:-1000}"; big="${BIG:-500}"; members="${MEMBERS:-100}"
window="${WINDOW:-20}"; samples="${SAMPLES:-50}"; with_synapse="${SYNAPSE:-1}"

source "$root/benches/lib.sh"
rss_of() { grep -m1 VmRSS "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
sc=$(free_port); sf=$(free_port); mc=$(free_port); mf=$(free_port)

mkdir -p "$work/myelin" "$work/synapse"
(cd "$work/myelin" && MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
    MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_REGISTRATION__ENABLED=true \
    MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn exec "$myelin" serve >/dev/null 2>&1) &
pids+=($!)
wait_up "$mc"
if [ "$with_synapse" = 1 ]; then
    "$python" tests/interop/synapse_config.py "$work/synapse" "$sc" "$sf" >/dev/null
    (cd "$work/synapse" && exec "$python" -m synapse.app.homeserver -c hs.yaml >/dev/null 2>&1) &
    pids+=($!)
    wait_up "$sc"
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
run() { # port pid
    "$myelin" bench sliding --url "http://127.0.0.1:$1" --rooms "$rooms" --big "$big" --members "$members" \
        --window "$window" --samples "$samples" --pid "$2" --json | tail -1 || echo '{"failed": true}'
}
m=$(run "$mc" "${pids[0]}")
s='{"failed": true}'
if [ "$with_synapse" = 1 ]; then sleep 3; s=$(run "$sc" "${pids[1]}"); fi
python3 - "$m" "$s" "$samples" <<'PY'
import json, sys
m, s, samples = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
def cell(r, k):
    return "failed" if r.get("failed") else f"{r[k]:.1f} ms"
def ratio(k):
    if m.get("failed") or s.get("failed"):
        return "—"
    return f"{s[k] / m[k]:.1f}x"
if not m.get("failed"):
    print(f"rooms {m['rooms']} ({m['big']} with {m['members']} members), window {m['window']}, {samples} samples; list count {m['count']}")
print("| answer | Myelin | Synapse 1.163.2 | Synapse / Myelin |")
print("|---|---|---|---|")
for k, label in [("first_p50_ms", "first, p50"), ("first_p99_ms", "first, p99"),
                 ("incremental_p50_ms", "after one message, p50"), ("incremental_p99_ms", "after one message, p99")]:
    print(f"| {label} | {cell(m, k)} | {cell(s, k)} | {ratio(k)} |")
def mem(r):
    if r.get("failed"):
        return "failed"
    before, after = r["rss_before_kib"], r["rss_after_kib"]
    return f"{before / 1024:.0f} → {after / 1024:.0f} MiB ({(after - before) / (2 * samples + 1):.0f} KiB per connection)"
print(f"| RSS after set-up → after {2 * samples + 1} connections | {mem(m)} | {mem(s)} | |")
def peak(r):
    return "failed" if r.get("failed") or r.get("peak_rss_kib") is None else f"{r['peak_rss_kib'] / 1024:.0f} MiB"
ratio_peak = "—" if "MiB" not in peak(m) or "MiB" not in peak(s) else f"{m['peak_rss_kib'] / s['peak_rss_kib']:.2f} (Myelin / Synapse)"
print(f"| peak RSS over the run | {peak(m)} | {peak(s)} | {ratio_peak} |")
PY
