//! IMU uploads: `.npy` arrays and CSV text of 6-axis samples, the sample cap and the
//! resampling to the IMU tower's input.

use omnibind::embed::preprocess::imu::preprocess;

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    let _ = preprocess(bytes);
}
