//! `cargo fuzz run xmatrix`: [`myelin_engine::fuzz_targets::XMATRIX`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::XMATRIX.check)(data));
