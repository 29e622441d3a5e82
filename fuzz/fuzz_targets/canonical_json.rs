//! `cargo fuzz run canonical_json`: [`myelin_engine::fuzz_targets::CANONICAL_JSON`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::CANONICAL_JSON.check)(data));
