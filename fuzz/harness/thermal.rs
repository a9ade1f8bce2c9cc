//! Thermal uploads: single-channel images and `.npy` maps, size caps and the resize to the
//! thermal tower's input.

use omnibind::embed::preprocess::thermal::preprocess_within;
use omnibind::embed::UploadBudget;

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    if let Ok(out) = preprocess_within(bytes, 16, &UploadBudget::default()) {
        assert_eq!(out.len(), 16 * 16);
    }
}
