#!/usr/bin/env bash
# Installs what a clean Debian machine needs to build and test Myelin, then
# makes sure the prebuilt RocksDB archive exists. Safe to run repeatedly.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need_apt=()
for pkg in libclang-dev clang; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    echo "setup: installing ${need_apt[*]} (RocksDB's bindings need libclang)"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
        rustup component add "$comp" || echo "setup: could not add ${comp}" >&2
    fi
done

"${root}/scripts/build-rocksdb.sh"
