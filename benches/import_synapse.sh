#!/usr/bin/env bash
# `myelin import synapse` at size (issue #23 §4): a real Synapse makes its
# database schema on a first start and is stopped; `myelin bench synapse-db`
# fills that database with ROOMS rooms of MEMBERS+1 local users and EVENTS
# events in all (real events: hashed, signed with Synapse's key, event ids
# their reference hashes, Synapse's state groups); then the release binary
# imports it. Reports the generation time, the import's events/s for the rooms
# (every event judged again by the auth rules and written with its state) and
# the importer's own peak RSS (VmHWM), plus the whole run's wall time and
# maximum RSS as GNU time measures it.
#
# Usage: benches/import_synapse.sh   (ROOMS=1000 MEMBERS=10 EVENTS=1000000)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rooms="${ROOMS:-1000}"; members="${MEMBERS:-10}"; events="${EVENTS:-1000000}"
source "$root/benches/lib.sh"

client="$(free_port)"; fed="$(free_port)"
syn="$work/synapse"; mkdir -p "$syn"
"$python" tests/interop/synapse_config.py "$syn" "$client" "$fed" >/dev/null
(cd "$syn" && exec "$python" -m synapse.app.homeserver -c hs.yaml >/dev/null 2>&1) &
pids+=($!)
wait_up "$client"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
name="localhost:$fed"

"$myelin" bench synapse-db --database "$syn/homeserver.db" --server-name "$name" \
    --signing-key "$syn/$name.signing.key" --rooms "$rooms" --members "$members" --events "$events" 2>/dev/null
printf 'server_name = "%s"\ndata_dir = "%s/myelin"\n' "$name" "$work" > "$work/myelin.toml"
/usr/bin/time -v "$myelin" import synapse --database "$syn/homeserver.db" --config "$work/myelin.toml" \
    >"$work/report" 2>"$work/stderr" || { cat "$work/report" "$work/stderr" >&2; exit 1; }
grep -E '^(rooms|verified)' "$work/report"
grep -E 'Elapsed \(wall clock\)|Maximum resident set size' "$work/stderr"
echo "data directory after the import: $(du -sm "$work/myelin" | cut -f1) MiB; Synapse's database: $(du -sm "$syn/homeserver.db" | cut -f1) MiB"
