//! `cargo fuzz run config`: [`myelin_engine::fuzz_targets::CONFIG`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::CONFIG.check)(data));
