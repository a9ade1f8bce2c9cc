//! The `index_dump` target: see `harness/index_dump.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: omnibind_fuzz::restore_panic_hook(),
    |input: &[u8]| omnibind_fuzz::index_dump::run(input)
);
