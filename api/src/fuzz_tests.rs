//! The API's fuzz targets ([`crate::fuzz_targets`]) under the engine's stable
//! seeded mutation fuzzer, in every test run (issue #22 §1).

use myelin_engine::{
    fuzz::{check_seed_files, fuzz},
    fuzz_targets::Target,
};

use crate::fuzz_targets;

/// Inputs per target in a default (CI) run; `MYELIN_FUZZ_ITERS` overrides.
const CI_INPUTS: usize = 20_000;

fn run(target: &Target) {
    fuzz(target.name, CI_INPUTS, &(target.seeds)(), target.check);
}

#[test]
fn range_headers_never_panic_and_stay_inside_the_file() {
    run(&fuzz_targets::RANGE);
}

#[test]
fn percent_decoding_never_panics_and_inverts_encoding() {
    run(&fuzz_targets::PERCENT);
}

#[test]
fn typed_request_bodies_never_panic() {
    run(&fuzz_targets::BODIES);
}

#[test]
fn the_seed_files_of_cargo_fuzz_are_the_targets_seeds() {
    check_seed_files(fuzz_targets::TARGETS.iter().map(|t| (t.name, (t.seeds)())));
}
