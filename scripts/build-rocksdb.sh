#!/usr/bin/env bash
# Builds the pinned RocksDB C++ library once and caches it outside the clone.
#
# RocksDB's C++ is ~22 of the ~24 minutes of a clean build on 2 cores (see
# ../shared/STACK.md). The workspace links this archive through
# `.cargo/config.toml` (ROCKSDB_LIB_DIR=.cache/rocksdb, ROCKSDB_STATIC=1), so
# every later clean build only compiles Rust. The archive is keyed by the
# librocksdb-sys version and the compression features it was built with; both
# must match the `rocksdb` dependency in Cargo.toml.
set -euo pipefail

SYS_VERSION="0.19.0+11.8.1"        # librocksdb-sys pulled in by rocksdb 0.25
FEATURES='"lz4", "zstd", "bindgen-runtime"'
KEY="librocksdb-sys-${SYS_VERSION}-lz4-zstd-O2"

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/myelin/${KEY}"
link="${root}/.cache/rocksdb"

mkdir -p "${root}/.cache"
if [[ -f "${cache}/librocksdb.a" ]]; then
    ln -sfn "${cache}" "${link}"
    echo "rocksdb: using cached ${cache}/librocksdb.a"
    exit 0
fi

echo "rocksdb: no cached archive at ${cache}; building RocksDB C++ (about 20 minutes on 2 cores)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/src"
cat > "${work}/Cargo.toml" <<TOML
[package]
name = "rocksdb-prebuild"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
librocksdb-sys = { version = "=${SYS_VERSION}", default-features = false, features = [${FEATURES}] }

[profile.release]
opt-level = 2
debug = false
TOML
echo 'fn main() {}' > "${work}/src/main.rs"
# Plain environment: a ROCKSDB_LIB_DIR inherited from the caller would skip the C++ build.
(cd "${work}" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC cargo build --release --quiet)

archive="$(find "${work}/target/release/build" -path '*librocksdb-sys-*/out/librocksdb.a' | head -n1)"
if [[ -z "${archive}" ]]; then
    echo "rocksdb: build finished but librocksdb.a was not found" >&2
    exit 1
fi
mkdir -p "${cache}.tmp"
objcopy --strip-debug "${archive}" "${cache}.tmp/librocksdb.a"
rm -rf "${cache}"
mv "${cache}.tmp" "${cache}"
ln -sfn "${cache}" "${link}"
echo "rocksdb: cached $(du -h "${cache}/librocksdb.a" | cut -f1) at ${cache}"
