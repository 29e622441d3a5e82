//! `cargo fuzz run percent_decode`: [`myelin_api::fuzz_targets::PERCENT`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_api::fuzz_targets::PERCENT.check)(data));
