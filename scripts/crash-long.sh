#!/usr/bin/env bash
# The long mode of tests/crash_server.rs: 100 SIGKILL/restart cycles of
# `myelin serve` under 8 writers in 4 rooms (CYCLES=N to change), printing the
# acknowledged-event count and restart-to-healthy p50/max at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bins
MYELIN_CRASH_CYCLES="${CYCLES:-100}" cargo nextest run --profile long --test crash_server \
    -E 'test(acknowledged_events_survive_kill_9)' --no-capture
