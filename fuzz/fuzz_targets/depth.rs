//! Depth uploads: 16-bit PNG and NumPy `.npy` maps, size caps, disparity conversion and the
//! resize to the depth tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::depth::{preprocess, DepthConfig};

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        if let Ok(out) = preprocess(bytes, &DepthConfig::default(), 16) {
            assert_eq!(out.len(), 16 * 16);
        }
    }
);
