#!/usr/bin/env bash
# Soak under a hard memory limit: Myelin (release build) in a memory cgroup of
# LIMIT_MB (cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`, whichever this
# machine has; `systemd-run -p MemoryMax=` is not used because containers
# rarely run systemd), with `[storage] memory_mb` = BUDGET, gets USERS users,
# ROOMS rooms and EVENTS messages through an appservice registration
# (`myelin bench soak`), and then every acknowledged event is read back. The
# run fails if the server dies (the cgroup's OOM kill) or an event is missing.
# Reports each phase's time and the RSS after it, hence RSS per 1,000 users and
# per 1,000 rooms, and the cgroup's own peak (page cache included).
#
# Needs root (to make the cgroup). Usage: benches/soak.sh
#   (USERS=100000 ROOMS=10000 EVENTS=1000000 LIMIT_MB=384 BUDGET=256 CLIENTS=32)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
users="${USERS:-100000}"; rooms="${ROOMS:-10000}"; events="${EVENTS:-1000000}"
limit_mb="${LIMIT_MB:-384}"; budget="${BUDGET:-256}"; clients="${CLIENTS:-32}"

source "$root/benches/lib.sh"

# The memory cgroup: v2 if mounted, else v1's memory controller.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg="/sys/fs/cgroup/myelin-soak-$$"
    mkdir "$cg"; echo $((limit_mb << 20)) > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
    peak_file="$cg/memory.peak"; events_file="$cg/memory.events"
elif [ -d /sys/fs/cgroup/memory ]; then
    cg="/sys/fs/cgroup/memory/myelin-soak-$$"
    mkdir "$cg"; echo $((limit_mb << 20)) > "$cg/memory.limit_in_bytes"
    echo $((limit_mb << 20)) > "$cg/memory.memsw.limit_in_bytes" 2>/dev/null || true
    peak_file="$cg/memory.max_usage_in_bytes"; events_file="$cg/memory.oom_control"
else
    echo "no memory cgroup on this machine" >&2; exit 1
fi
remove_cgroup() { cleanup; for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; sleep 0.5; rmdir "$cg" 2>/dev/null || true; }
trap remove_cgroup EXIT

mc=$(free_port); mf=$(free_port)
token="soak-as-token-$$"
mkdir -p "$work/myelin"
cat > "$work/soak.yaml" <<YAML
id: soak
url: null
as_token: $token
hs_token: soak-hs-token-$$
sender_localpart: soak-bot
namespaces:
  users:
  - regex: "@soak-.*"
    exclusive: true
  aliases: []
  rooms: []
rate_limited: false
YAML
(cd "$work/myelin" && echo $BASHPID > "$cg/cgroup.procs" && MYELIN_STORAGE__MEMORY_MB="$budget" \
    MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" \
    MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn exec "$myelin" serve >"$work/server.log" 2>&1) &
pid=$!; pids+=("$pid")
wait_up "$mc"
(cd "$work/myelin" && "$myelin" admin appservice add "$work/soak.yaml" >/dev/null)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "limit ${limit_mb} MiB (cgroup $cg), memory_mb = $budget; $users users, $rooms rooms, $events events, $clients clients"
set +e
report=$("$myelin" bench soak --url "http://127.0.0.1:$mc" --as-token "$token" --users "$users" --rooms "$rooms" \
    --events "$events" --clients "$clients" --pid "$pid" | tail -1)
status=$?
set -e
alive=yes; kill -0 "$pid" 2>/dev/null || alive=no
echo "bench exit status $status; server alive: $alive; cgroup peak $(( $(cat "$peak_file") >> 20 )) MiB"
grep -E "oom_kill|oom " "$events_file" || true
[ "$alive" = yes ] || { tail -20 "$work/server.log"; exit 1; }
python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
rss = {p["phase"]: p["kib"] / 1024 for p in r["rss_kib"]}
print(f"| phase | seconds | RSS after |")
print(f"|---|---|---|")
print(f"| start | | {rss['start']:.0f} MiB |")
for phase, key in [("users registered", "register_s"), ("rooms created", "create_s"), ("users joined", "join_s"),
                   ("events sent", "send_s"), ("read back", "verify_s")]:
    print(f"| {phase} | {r[key]:.0f} | {rss[phase]:.0f} MiB |")
print(f"events acknowledged {r['events']}, read back exactly once {r['readable']}; send rate {r['events_per_second']:.0f} ev/s; "
      f"peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB")
print(f"RSS per 1,000 users (registration): {(rss['users registered'] - rss['start']) * 1000 / r['users']:.2f} MiB; "
      f"per 1,000 rooms (creation): {(rss['rooms created'] - rss['users registered']) * 1000 / r['rooms']:.2f} MiB")
PY
[ "$status" = 0 ]
