#!/usr/bin/env bash
# `cargo fuzz` (libFuzzer, coverage guided, AddressSanitizer) over every fuzz
# target (fuzz/fuzz_targets/, the same checks the stable harness runs in the
# test suite), one after another, each from its seeds (fuzz/seeds/<target>) and
# the corpus earlier runs grew (fuzz/corpus/<target>, not committed).
#
#   scripts/fuzz-cargo.sh                 short mode (CI): SECS=8 seconds per target
#   RUNS=10000000 scripts/fuzz-cargo.sh   long mode: that many inputs per target
#   TARGETS="pdu bodies" scripts/...      only these targets
#
# Needs the nightly toolchain (the sanitizer flags); installs cargo-fuzz from
# crates.io when missing. Exits non-zero on the first crash or broken property;
# libFuzzer leaves the input in fuzz/artifacts/<target>/ and `cargo +nightly fuzz run -O
# <target> <that file>` repeats it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz-cargo: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cd fuzz
all=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^myelin-fuzz$')
targets=${TARGETS:-$all}
cargo +nightly fuzz build -O
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n "seeds/$t"/* "corpus/$t/"
    if [ -n "${RUNS:-}" ]; then limit="-runs=$RUNS"; else limit="-max_total_time=${SECS:-8}"; fi
    started=$(date +%s)
    # -print_final_stats: the run count and rate go into the log this prints.
    # The binaries built above, run directly: `cargo fuzz run` would rebuild
    # from whatever the source tree holds by the time a later target starts.
    "target/x86_64-unknown-linux-gnu/release/$t" "corpus/$t" "$limit" -print_final_stats=1 -artifact_prefix="artifacts/$t/" 2>"/tmp/fuzz-cargo-$t.log" || {
        tail -40 "/tmp/fuzz-cargo-$t.log" >&2
        echo "fuzz-cargo: $t FAILED (input in fuzz/artifacts/$t/)" >&2
        exit 1
    }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "/tmp/fuzz-cargo-$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "/tmp/fuzz-cargo-$t.log" | tail -1)
    echo "fuzz-cargo: $t: ${runs:-?} inputs, 0 failures, $(( $(date +%s) - started )) s, $cov, corpus $(ls "corpus/$t" | wc -l)"
done
