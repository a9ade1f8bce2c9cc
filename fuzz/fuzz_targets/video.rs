//! Video uploads: ZIP archives of frames (entry and size caps from the central directory,
//! natural ordering of names), frame decoding and the clip sampling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::video::preprocess_at;

fuzz_target!(|bytes: &[u8]| {
    let _ = preprocess_at(bytes, 16);
});
