//! Thermal uploads: single-channel images and `.npy` maps, size caps and the resize to the
//! thermal tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::thermal::preprocess;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(out) = preprocess(bytes, 16) {
        assert_eq!(out.len(), 16 * 16);
    }
});
