#!/usr/bin/env bash
# `myelin bench appservice` against Myelin (release build) and Synapse (the
# interop venv, SQLite), on loopback, in one run: events/s delivered to one
# appservice while 20 clients send into 20 rooms, send-to-appservice latency,
# and the clients' send rate without and with the appservice registered.
#
# The bench plays the appservice itself (it listens on a free port); its
# registration is loaded into Myelin at run time (`myelin admin appservice
# add`) and into Synapse at a restart (`app_service_config_files`).
#
# Myelin's send rate with and without the appservice is measured in ROUNDS
# alternating pairs (without, then with; the appservice removed again between
# rounds), so a database growing through the run or a neighbour's load does not
# count against one side; the ratio is of the two means. Synapse needs a restart
# per change of its registrations, so it is measured once each way.
#
# Usage: benches/appservice.sh   (CLIENTS=20 ROOMS=20 MESSAGES=100 ROUNDS=3 to change sizes)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
clients="${CLIENTS:-20}"
rooms="${ROOMS:-20}"
messages="${MESSAGES:-100}"
rounds="${ROUNDS:-3}"

source "$root/benches/lib.sh"
sc=$(free_port); sf=$(free_port); mc=$(free_port); mf=$(free_port); asp=$(free_port)

registration() { # file sender_localpart
    cat > "$1" <<YAML
id: bench
url: "http://127.0.0.1:$asp"
as_token: bench-as-token-$2
hs_token: bench-hs-token
sender_localpart: $2
namespaces:
  users:
  - regex: "@bench.*"
    exclusive: false
  aliases: []
  rooms: []
rate_limited: false
YAML
}

start_synapse() { # dir
    (cd "$1" && exec "$python" -m synapse.app.homeserver -c hs.yaml >/dev/null 2>&1) &
    pids+=($!)
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
settle() { sleep 3; }

mkdir -p "$work/myelin" "$work/synapse"
(cd "$work/myelin" && MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
    MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_REGISTRATION__ENABLED=true \
    MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn exec "$myelin" serve >/dev/null 2>&1) &
pids+=($!)
"$python" tests/interop/synapse_config.py "$work/synapse" "$sc" "$sf" >/dev/null
start_synapse "$work/synapse"
wait_up "$mc"; wait_up "$sc"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo
send_json() { "$myelin" bench send --url "http://127.0.0.1:$1" --rooms "$rooms" --clients "$clients" --messages "$messages" --json; }
as_json() { "$myelin" bench appservice --url "http://127.0.0.1:$1" --listen "127.0.0.1:$asp" --hs-token bench-hs-token --rooms "$rooms" --clients "$clients" --messages "$messages" --json || true; }

# Myelin: without and with the appservice (added and removed at run time), alternating.
registration "$work/myelin-reg.yaml" asbench
m_bases=(); m_runs=()
for _ in $(seq 1 "$rounds"); do
    settle; m_bases+=("$(send_json "$mc" | tail -1)")
    (cd "$work/myelin" && "$myelin" admin appservice add "$work/myelin-reg.yaml" >/dev/null)
    settle; m_runs+=("$(as_json "$mc" | tail -1)")
    (cd "$work/myelin" && "$myelin" admin appservice remove bench >/dev/null)
done

# Synapse: without, then with (registered at a restart).
settle; s_base=$(send_json "$sc")
registration "$work/synapse-reg.yaml" asbench
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$python" - "$work/synapse/hs.yaml" "$work/synapse-reg.yaml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["app_service_config_files"] = [sys.argv[2]]
yaml.safe_dump(c, open(sys.argv[1], "w"))
PY
start_synapse "$work/synapse"
wait_up "$sc"
settle; s=$(as_json "$sc")

hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
# Peak RSS: Myelin over the whole run; Synapse since its restart with the appservice.
echo "peak RSS: Myelin $(hwm_of "${pids[0]}") KiB, Synapse $(hwm_of "${pids[-1]}") KiB"
python3 - "$rooms" "$clients" "$s_base" "$s" "${m_bases[@]}" "${m_runs[@]}" <<'PY'
import json, statistics, sys
rooms, clients = sys.argv[1], sys.argv[2]
def parse(text):
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
sb, s = parse(sys.argv[3]), parse(sys.argv[4])
rest = sys.argv[5:]
m_bases, m_runs = [parse(t) for t in rest[:len(rest) // 2]], [parse(t) for t in rest[len(rest) // 2:]]
def mean(rs, key):
    vals = [r[key] for r in rs if r and r.get(key)]
    return statistics.mean(vals) if vals else 0
# Myelin's figures are the means over its rounds.
mb = {"events_per_second": mean(m_bases, "events_per_second")}
m = None if any(r is None for r in m_runs) else {
    k: mean(m_runs, k) for k in ("send_events_per_second", "delivered_events_per_second", "p50_ms", "p99_ms", "transactions")
}
if m:
    m["sent"] = sum(r["sent"] for r in m_runs)
    m["delivered"] = sum(r["delivered"] for r in m_runs)
print(f"Myelin: mean of {len(m_runs)} alternating rounds; Synapse: one run each way")
print("| scenario | Myelin | Synapse 1.163.2 | ratio |")
print("|---|---|---|---|")
print(f"| client sends, {rooms} rooms, {clients} clients, no appservice | {mb['events_per_second']:.0f} ev/s | {sb['events_per_second']:.0f} ev/s | {mb['events_per_second'] / sb['events_per_second']:.1f}x |")
def cell(r, key, unit, fmt="{:.0f}"):
    if r is None:
        return "failed"
    lost = "" if r["delivered"] == r["sent"] else f" (only {r['delivered']} of {r['sent']} arrived)"
    return fmt.format(r[key]) + f" {unit}{lost}"
def ratio(a, b, key, inverse=False):
    if not a or not b or not b[key] or not a[key]:
        return "—"
    return f"{(b[key] / a[key]) if inverse else (a[key] / b[key]):.1f}x"
print(f"| client sends with the appservice registered | {cell(m, 'send_events_per_second', 'ev/s')} | {cell(s, 'send_events_per_second', 'ev/s')} | {ratio(m, s, 'send_events_per_second')} |")
print(f"| events delivered to the appservice | {cell(m, 'delivered_events_per_second', 'ev/s')} | {cell(s, 'delivered_events_per_second', 'ev/s')} | {ratio(m, s, 'delivered_events_per_second')} |")
print(f"| send to appservice latency p50 | {cell(m, 'p50_ms', 'ms', '{:.1f}')} | {cell(s, 'p50_ms', 'ms', '{:.1f}')} | {ratio(m, s, 'p50_ms', True)} lower |")
print(f"| send to appservice latency p99 | {cell(m, 'p99_ms', 'ms', '{:.1f}')} | {cell(s, 'p99_ms', 'ms', '{:.1f}')} | {ratio(m, s, 'p99_ms', True)} lower |")
pairs = [f"{100 * r['send_events_per_second'] / b['events_per_second']:.0f}%" for b, r in zip(m_bases, m_runs) if b and r]
if m:
    print(f"Myelin: send rate with the appservice is {100 * m['send_events_per_second'] / mb['events_per_second']:.0f}% of the rate without (rounds: {', '.join(pairs)}); {m['sent']} events in all")
if s:
    print(f"Synapse: send rate with the appservice is {100 * s['send_events_per_second'] / sb['events_per_second']:.0f}% of the rate without; {s['transactions']} transactions for {s['sent']} events")
PY
