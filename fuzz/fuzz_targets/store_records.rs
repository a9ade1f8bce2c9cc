//! The `store_records` target: see `harness/store_records.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| omnibind_fuzz::store_records::run(input));
