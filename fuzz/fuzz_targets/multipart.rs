//! The `multipart` target: see `harness/multipart.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: omnibind_fuzz::restore_panic_hook(),
    |input: &[u8]| omnibind_fuzz::multipart::run(input)
);
