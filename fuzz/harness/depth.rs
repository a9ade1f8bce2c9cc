//! Depth uploads: 16-bit PNG and NumPy `.npy` maps, size caps, disparity conversion and the
//! resize to the depth tower's input.

use omnibind::embed::preprocess::depth::{preprocess_within, DepthConfig};
use omnibind::embed::UploadBudget;

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    if let Ok(out) = preprocess_within(bytes, &DepthConfig::default(), 16, &UploadBudget::default())
    {
        assert_eq!(out.len(), 16 * 16);
    }
}
