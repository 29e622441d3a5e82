//! `cargo fuzz run glob`: [`myelin_engine::fuzz_targets::GLOB`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::GLOB.check)(data));
