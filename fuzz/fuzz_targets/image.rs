//! Image uploads: format detection from the bytes, then the decoder with its size and memory
//! limits, EXIF orientation and the CLIP preprocessing. Any input must give a value or an
//! error, never a panic, an abort or an allocation past libFuzzer's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::image::{preprocess, ImagePreprocessConfig};
use omnibind::ingest::detect::detect;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        let _ = detect(bytes);
        if let Ok(pixels) = preprocess(bytes, &ImagePreprocessConfig::clip(32)) {
            assert_eq!(pixels.len(), 3 * 32 * 32);
        }
    }
);
