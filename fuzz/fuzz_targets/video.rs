//! Video uploads: ZIP archives of frames (entry and size caps from the central directory,
//! natural ordering of names), frame decoding and the clip sampling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::video::preprocess_at;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        let _ = preprocess_at(bytes, 16);
    }
);
