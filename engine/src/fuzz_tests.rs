//! The engine's fuzz targets ([`crate::fuzz_targets`]) under the stable seeded
//! mutation fuzzer, in every test run (issue #22 §1); `cargo fuzz` drives the
//! same targets coverage-guided (`fuzz/`).

use crate::{
    fuzz::fuzz,
    fuzz_targets::{self, Target},
};

/// Inputs per target in a default (CI) run; `MYELIN_FUZZ_ITERS` overrides.
const CI_INPUTS: usize = 20_000;

fn run(target: &Target, inputs: usize) {
    fuzz(target.name, inputs, &(target.seeds)(), target.check);
}

#[test]
fn x_matrix_headers_and_request_verification_never_panic() {
    run(&fuzz_targets::XMATRIX, CI_INPUTS);
}

#[test]
fn pdus_from_hostile_json_never_panic_and_keep_their_properties() {
    run(&fuzz_targets::PDU, CI_INPUTS);
}

#[test]
fn canonical_json_round_trips() {
    run(&fuzz_targets::CANONICAL_JSON, CI_INPUTS);
}

#[test]
fn server_names_ids_and_tokens_never_panic_and_agree() {
    run(&fuzz_targets::IDS, CI_INPUTS);
}

#[test]
fn config_files_never_panic() {
    run(&fuzz_targets::CONFIG, CI_INPUTS / 4);
}

#[test]
fn filter_globs_agree_with_a_reference_matcher() {
    run(&fuzz_targets::GLOB, CI_INPUTS);
}

#[test]
fn federation_transactions_are_read_whole_or_refused() {
    run(&fuzz_targets::TRANSACTION, CI_INPUTS);
}

#[test]
fn the_seed_files_of_cargo_fuzz_are_the_targets_seeds() {
    crate::fuzz::check_seed_files(fuzz_targets::TARGETS.iter().map(|t| (t.name, (t.seeds)())));
}
