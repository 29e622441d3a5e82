# What every benches/*.sh shares; sourced after `cd "$root"`: installs the interop
# software, builds the release binary, and defines the work directory, the process
# list killed on exit, free_port and wait_up.
bash tests/interop/setup.sh >/dev/null
# MYELIN_BIN: an already built binary to measure instead (then nothing is built).
if [ -z "${MYELIN_BIN:-}" ]; then
    cargo build --release --bin myelin >/dev/null 2>&1 || cargo build --release --bin myelin
fi
myelin="${MYELIN_BIN:-$root/target/release/myelin}"
python="${XDG_CACHE_HOME:-$HOME/.cache}/myelin/venv-synapse-1.163.2/bin/python"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$1/_matrix/client/versions" >/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2; return 1
}
