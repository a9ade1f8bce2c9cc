//! Image uploads as the server reads them: format detection from the bytes, the decode budget
//! reserved from the header (one decode at most 512 MiB), then the decoder with its size
//! limits, EXIF orientation and the CLIP preprocessing. Any input must give a value or an
//! error, never a panic, an abort or an allocation past libFuzzer's limit.

use omnibind::embed::preprocess::image::{preprocess_within, ImagePreprocessConfig};
use omnibind::embed::UploadBudget;
use omnibind::ingest::detect::detect;

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    let _ = detect(bytes);
    if let Ok(pixels) = preprocess_within(
        bytes,
        &ImagePreprocessConfig::clip(32),
        &UploadBudget::default(),
    ) {
        assert_eq!(pixels.len(), 3 * 32 * 32);
    }
}
