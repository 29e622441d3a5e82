//! `cargo fuzz run transaction`: [`myelin_engine::fuzz_targets::TRANSACTION`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::TRANSACTION.check)(data));
