//! `cargo fuzz run range`: [`myelin_api::fuzz_targets::RANGE`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_api::fuzz_targets::RANGE.check)(data));
