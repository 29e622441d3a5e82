//! `cargo fuzz run ids`: [`myelin_engine::fuzz_targets::IDS`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::IDS.check)(data));
