//! The `text` target: see `harness/text.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: omnibind_fuzz::restore_panic_hook(),
    |input: &[u8]| omnibind_fuzz::text::run(input)
);
