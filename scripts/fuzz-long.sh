#!/usr/bin/env bash
# The long mode of the fuzz targets (engine/src/fuzz_tests.rs, api/src/fuzz_tests.rs):
# ITERS inputs per target (default 10 million) from SEED (default: the CI seed),
# in a release build, one target after another. Prints each target's count, rate
# and failures; exits non-zero on the first failing input, which it prints with the
# seed that repeats it. Usage: scripts/fuzz-long.sh  (ITERS=10000000 SEED=N)
set -euo pipefail
cd "$(dirname "$0")/.."
export MYELIN_FUZZ_ITERS="${ITERS:-10000000}"
[ -n "${SEED:-}" ] && export MYELIN_FUZZ_SEED="$SEED"
# One test thread: the targets' rates are printed and two cores are shared.
cargo nextest run --profile fuzz-long --cargo-profile release -p myelin-engine -p myelin-api \
    -E 'test(/fuzz_tests::/)' --no-capture --test-threads 1 --no-fail-fast
