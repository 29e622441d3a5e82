#!/usr/bin/env bash
# Two builds of Myelin side by side on the paths a change touched: `myelin bench
# send` (client API: the per-request peer address) against one server of each
# build, and `myelin bench federation` (inbound /send: the per-origin rate limit
# and key lookup after the signature check) between two servers of each build,
# alternating ROUNDS times so machine noise falls on both. Prints each round's
# rates and the median ratio new / base.
#
# Usage: BASE=path/to/base/myelin [MYELIN_BIN=path/to/new/myelin] benches/ab.sh   (ROUNDS=3 MESSAGES=2000 FED_MESSAGES=300)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}"; messages="${MESSAGES:-2000}"; fed_messages="${FED_MESSAGES:-300}"
source "$root/benches/lib.sh"
base="${BASE:?BASE must name the baseline myelin binary}"
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start() { # binary label → prints "pid client_port federation_port"
    local dir="$work/$2" mc mf; mc=$(free_port); mf=$(free_port)
    mkdir -p "$dir"
    (cd "$dir" && exec env MYELIN_SERVER_NAME="127.0.0.1:$mf" MYELIN_CLIENT__LISTEN="127.0.0.1:$mc" \
        MYELIN_FEDERATION__LISTEN="127.0.0.1:$mf" MYELIN_FEDERATION__VERIFY_TLS=false \
        MYELIN_FEDERATION__IP_RANGE_ALLOW='["127.0.0.0/8"]' MYELIN_REGISTRATION__ENABLED=true \
        MYELIN_RATE_LIMIT__PER_SECOND=0 MYELIN_RATE_LIMIT__REGISTRATIONS_PER_SECOND=0 RUST_LOG=warn "$1" serve >"$dir.log" 2>&1) &
    echo "$! $mc $mf"
}

declare -A pid cport fport
for label in base-a base-b new-a new-b; do
    bin="$myelin"; [[ $label == base-* ]] && bin="$base"
    read -r p c f < <(start "$bin" "$label"); pids+=("$p"); pid[$label]=$p; cport[$label]=$c; fport[$label]=$f
done
for label in base-a base-b new-a new-b; do wait_up "${cport[$label]}"; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "| round | send base (ev/s) | send new (ev/s) | new/base | federation base (msg/s) | federation new (msg/s) | new/base |"
echo "|---|---|---|---|---|---|---|"
send_ratios=(); fed_ratios=()
rate() { # kind label
    if [ "$1" = send ]; then
        field "$("$myelin" bench send --url "http://127.0.0.1:${cport[$2-a]}" --rooms 1 --clients 32 --messages "$messages" --json | tail -1)" events_per_second
    else
        field "$("$myelin" bench federation --url-a "http://127.0.0.1:${cport[$2-a]}" --url-b "http://127.0.0.1:${cport[$2-b]}" \
            --server-a "127.0.0.1:${fport[$2-a]}" --messages "$fed_messages" --senders 1 --json | tail -1)" messages_per_second
    fi
}
for r in $(seq 1 "$rounds"); do
    sb=$(rate send base); sn=$(rate send new); fb=$(rate federation base); fn=$(rate federation new)
    s=$(awk "BEGIN{printf \"%.3f\", $sn/$sb}"); f=$(awk "BEGIN{printf \"%.3f\", $fn/$fb}")
    send_ratios+=("$s"); fed_ratios+=("$f")
    printf '| %d | %.0f | %.0f | %s | %.0f | %.0f | %s |\n' "$r" "$sb" "$sn" "$s" "$fb" "$fn" "$f"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "median new/base: send $(median "${send_ratios[@]}"), federation $(median "${fed_ratios[@]}")"
for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pid[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
