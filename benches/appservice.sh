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
# Usage: benches/appservice.sh   (CLIENTS=20 ROOMS=20 MESSAGES=100 to change sizes)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
clients="${CLIENTS:-20}"
rooms="${ROOMS:-20}"
messages="${MESSAGES:-100}"

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
    MYELIN_RATE_LIMIT__PER_SECOND=0 RUST_LOG=warn exec "$myelin" serve >/dev/null 2>&1) &
pids+=($!)
"$python" tests/interop/synapse_config.py "$work/synapse" "$sc" "$sf" >/dev/null
start_synapse "$work/synapse"
wait_up "$mc"; wait_up "$sc"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo
# Baselines: the same send load without an appservice.
settle; m_base=$("$myelin" bench send --url "http://127.0.0.1:$mc" --rooms "$rooms" --clients "$clients" --messages "$messages" --json)
settle; s_base=$("$myelin" bench send --url "http://127.0.0.1:$sc" --rooms "$rooms" --clients "$clients" --messages "$messages" --json)

# Register the appservice: Myelin at run time, Synapse with a restart.
registration "$work/myelin-reg.yaml" asbench
(cd "$work/myelin" && "$myelin" admin appservice add "$work/myelin-reg.yaml" >/dev/null)
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

settle; m=$("$myelin" bench appservice --url "http://127.0.0.1:$mc" --listen "127.0.0.1:$asp" --hs-token bench-hs-token --rooms "$rooms" --clients "$clients" --messages "$messages" --json) || true
settle; s=$("$myelin" bench appservice --url "http://127.0.0.1:$sc" --listen "127.0.0.1:$asp" --hs-token bench-hs-token --rooms "$rooms" --clients "$clients" --messages "$messages" --json) || true

hwm_of() { grep -m1 VmHWM "/proc/$1/status" 2>/dev/null | awk '{print $2}'; }
# Peak RSS: Myelin over the whole run; Synapse since its restart with the appservice.
echo "peak RSS: Myelin $(hwm_of "${pids[0]}") KiB, Synapse $(hwm_of "${pids[-1]}") KiB"
python3 - "$rooms" "$clients" "$m_base" "$s_base" "$m" "$s" <<'PY'
import json, sys
rooms, clients = sys.argv[1], sys.argv[2]
def parse(text):
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
mb, sb, m, s = (parse(t) for t in sys.argv[3:7])
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
for name, base, r in (("Myelin", mb, m), ("Synapse", sb, s)):
    if r:
        print(f"{name}: send rate with the appservice is {100 * r['send_events_per_second'] / base['events_per_second']:.0f}% of the rate without; {r['transactions']} transactions for {r['sent']} events")
PY
