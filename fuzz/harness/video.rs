//! Video uploads: ZIP archives of frames (entry and size caps from the central directory,
//! natural ordering of names), frame decoding and the clip sampling.

use omnibind::embed::preprocess::video::preprocess_at;

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    let _ = preprocess_at(bytes, 16);
}
