#!/usr/bin/env bash
# Restart-to-healthy with a large database (issue #22 §3: goal p50 <= 1 s at 1 GB).
# Fills a fresh data directory with `myelin bench soak` chunks (users, rooms and
# small messages through an appservice registration, every event read back) until
# it holds SIZE_MB, then CYCLES times: stop the server (SIGKILL and SIGTERM in
# turn), start it again on the same data and time until `/health` answers 200
# and until an authenticated `/messages` read answers 200. Prints each cycle and
# the p50/max of each kind; the run fails if a restart takes over 60 s.
#
# Usage: benches/restart.sh   (SIZE_MB=1024 CYCLES=10 CHUNK_EVENTS=400000)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
size_mb="${SIZE_MB:-1024}"; cycles="${CYCLES:-10}"; chunk="${CHUNK_EVENTS:-400000}"

source "$root/benches/lib.sh"

mc=$(free_port); mf=$(free_port)
data="$work/myelin"; mkdir -p "$data"
token="restart-as-token-$$"
cat > "$work/soak.yaml" <<YAML
id: restart-bench
url: null
as_token: $token
hs_token: restart-hs-token-$$
sender_localpart: soak-bot
namespaces:
  users:
  - regex: "@soak-.*"
    exclusive: true
  aliases: []
  rooms: []
rate_limited: false
YAML

pid=""
serve() {
    (cd "$data" && MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
        MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn \
        exec "$myelin" serve >>"$work/server.log" 2>&1) &
    pid=$!; pids+=("$pid")
}
now_ms() { date +%s%3N; }
# Milliseconds from $1 until URL $2 answers 200 (with header $3), or 60 s.
until_200() {
    local start=$1 url=$2 header=${3:-X-None: 0}
    for _ in $(seq 1 6000); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$header" "$url")" = 200 ]; then
            echo $(( $(now_ms) - start )); return 0
        fi
        sleep 0.01
    done
    echo "no 200 from $url within 60 s" >&2; return 1
}

serve
wait_up "$mc"
(cd "$data" && "$myelin" admin appservice add "$work/soak.yaml" >/dev/null)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u '+%Y-%m-%d %H:%M UTC')"
events=0; n=0
while [ "$(du -sm "$data" | cut -f1)" -lt "$size_mb" ]; do
    n=$((n + 1))
    r=$("$myelin" bench soak --url "http://127.0.0.1:$mc" --as-token "$token" --users 2000 --rooms 200 \
        --events "$chunk" --clients 32 | tail -1)
    got=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["events"], r["readable"], round(r["events_per_second"]))' "$r")
    set -- $got
    [ "$1" = "$2" ] || { echo "chunk $n: $1 acknowledged, $2 read back" >&2; exit 1; }
    events=$((events + $1))
    echo "chunk $n: $1 events at $3 ev/s, all read back; data directory $(du -sm "$data" | cut -f1) MiB"
done

# A room and a token to read with after each restart.
login=$(curl -sf -X POST "http://127.0.0.1:$mc/_matrix/client/v3/register" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" -d '{"type":"m.login.application_service","username":"soak-reader"}')
reader=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["access_token"])' "$login")
room=$(curl -sf -X POST "http://127.0.0.1:$mc/_matrix/client/v3/createRoom" -H "Authorization: Bearer $reader" \
    -H 'Content-Type: application/json' -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
echo "database: $(du -sm "$data" | cut -f1) MiB, $events messages (plus the users, rooms and joins of $n soak chunks)"

health=(); ready=()
for c in $(seq 1 "$cycles"); do
    if [ $((c % 2)) = 1 ]; then sig=KILL; else sig=TERM; fi
    kill -s "$sig" "$pid"; wait "$pid" 2>/dev/null || true
    start=$(now_ms)
    serve
    h=$(until_200 "$start" "http://127.0.0.1:$mc/health")
    m=$(until_200 "$start" "http://127.0.0.1:$mc/_matrix/client/v3/rooms/$room/messages?dir=b&limit=10" \
        "Authorization: Bearer $reader")
    health+=("$h"); ready+=("$m")
    echo "cycle $c (SIG$sig): /health 200 after $h ms, /messages 200 after $m ms"
done
python3 - "${health[*]}" "${ready[*]}" <<'PY'
import statistics, sys
for name, xs in (("/health", sys.argv[1]), ("/messages", sys.argv[2])):
    v = sorted(int(x) for x in xs.split())
    print(f"{name}: p50 {statistics.median(v):.0f} ms, max {v[-1]} ms over {len(v)} restarts")
PY
