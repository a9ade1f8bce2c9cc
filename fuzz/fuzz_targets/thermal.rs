//! Thermal uploads: single-channel images and `.npy` maps, size caps and the resize to the
//! thermal tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::thermal::preprocess;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        if let Ok(out) = preprocess(bytes, 16) {
            assert_eq!(out.len(), 16 * 16);
        }
    }
);
