//! `cargo fuzz run pdu`: [`myelin_engine::fuzz_targets::PDU`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| (myelin_engine::fuzz_targets::PDU.check)(data));
