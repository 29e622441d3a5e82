//! `cargo fuzz run bodies`: [`myelin_api::fuzz_targets::BODIES`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_api::fuzz_targets::BODIES.check)(data));
