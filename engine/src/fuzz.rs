//! A seeded mutation fuzzer for the parsers that strangers reach (issue #22 §1).
//!
//! The stable half of the project's fuzzing, run on every `make test` (the
//! other half is `cargo fuzz` on the nightly toolchain, `fuzz/`, over the same
//! [`crate::fuzz_targets`]): each input is a random mutation of a valid seed
//! (bytes flipped, parser tokens spliced in, slices dropped, repeated or cut),
//! the same seed always gives the same inputs, and a panic fails with the
//! iteration and the input. Targets also check properties (a parse that
//! round-trips), which panic the same way. `MYELIN_FUZZ_ITERS` sets the inputs
//! per target (the CI default is small), `MYELIN_FUZZ_SEED` the generator's
//! seed (a failure prints it, to repeat the run); `scripts/fuzz-long.sh` runs
//! the long mode.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::Instant,
};

/// A small, seeded generator: the same seed gives the same inputs.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Fragments that tend to reach corners of JSON, TOML, header and id parsers.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    ",",
    "=",
    ":",
    "{",
    "}",
    "[",
    "]",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "9007199254740993",
    "18446744073709551616",
    "\u{0}",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "X-Matrix ",
    "origin",
    "sig",
    "key",
    "ed25519:",
    "\"\"",
    "{}",
    "[]",
    "\\u0000",
    "\\ud800",
    "bytes=",
    "-",
    "..",
    "[::1]",
    ":65536",
    "@",
    "!",
    "$",
    "#",
    "\n",
    "[[",
    "]]",
    "'''",
    "\"\"\"",
    "nan",
    "inf",
    "_",
];

/// Inputs per target: `MYELIN_FUZZ_ITERS`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("MYELIN_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One to five random edits of `seed`.
pub fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            1 | 5 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 => out.truncate(at),
            _ => {
                // Repeat a slice: deep nesting, long strings.
                let end = (at + rng.below(16)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
        }
    }
    out
}

/// The generator's seed: `MYELIN_FUZZ_SEED`, else a fixed one so CI runs repeat.
pub fn seed() -> u64 {
    std::env::var("MYELIN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s != 0)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// Runs `target` on `iterations(default)` mutations of the seeds (a seed
/// itself every so often); fails on the first panic. Prints the count and rate.
pub fn fuzz(name: &str, default: usize, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    let seed_value = seed();
    let mut rng = XorShift(seed_value);
    let total = iterations(default);
    let started = Instant::now();
    for n in 0..total {
        let seed = &seeds[n % seeds.len()];
        let input = if n % 1024 < seeds.len() { seed.clone() } else { mutate(&mut rng, seed) };
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!(
                "fuzz {name}: input {n} (MYELIN_FUZZ_SEED={seed_value}) failed: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {total} inputs (seed {seed_value}), 0 failures, {secs:.1} s ({:.0}/s)",
        total as f64 / secs.max(1e-9)
    );
}

/// The folder of `cargo fuzz`'s seed corpora, one folder per target.
pub fn seed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

/// Checks that `fuzz/seeds/<target>/<n>` holds exactly each target's seeds,
/// so both fuzzers start from the same inputs; with
/// `MYELIN_WRITE_FUZZ_SEEDS=1` writes them instead. Panics on a difference.
pub fn check_seed_files<'a>(targets: impl Iterator<Item = (&'a str, Vec<Vec<u8>>)>) {
    let write = std::env::var_os("MYELIN_WRITE_FUZZ_SEEDS").is_some();
    for (name, seeds) in targets {
        let dir = seed_dir().join(name);
        if write {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            for (n, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(n.to_string()), seed).unwrap_or_else(|e| panic!("writing seed {n}: {e}"));
            }
            continue;
        }
        let on_disk = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            on_disk,
            seeds.len(),
            "{}: seed files differ (MYELIN_WRITE_FUZZ_SEEDS=1 rewrites them)",
            dir.display()
        );
        for (n, seed) in seeds.iter().enumerate() {
            let file = std::fs::read(dir.join(n.to_string())).unwrap_or_default();
            assert!(&file == seed, "{}/{n} differs from the target's seed (MYELIN_WRITE_FUZZ_SEEDS=1)", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reports a failing target: a fuzzer that cannot fail proves nothing.
    #[test]
    fn a_target_that_panics_on_some_mutation_fails_the_run() {
        let seeds = vec![b"{\"a\":1}".to_vec()];
        let run = catch_unwind(|| fuzz("self-check", 1_000, &seeds, |input| assert!(input.len() <= 7)));
        assert!(run.is_err(), "a target that panics on longer inputs passed 1,000 mutations");
    }

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let (mut a, mut b) = (XorShift(42), XorShift(42));
        let seed = b"bytes=0-99";
        for _ in 0..100 {
            assert_eq!(mutate(&mut a, seed), mutate(&mut b, seed));
        }
    }
}
