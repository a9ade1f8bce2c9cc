//! Depth uploads: 16-bit PNG and NumPy `.npy` maps, size caps, disparity conversion and the
//! resize to the depth tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::depth::{preprocess, DepthConfig};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(out) = preprocess(bytes, &DepthConfig::default(), 16) {
        assert_eq!(out.len(), 16 * 16);
    }
});
