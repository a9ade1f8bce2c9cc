//! IMU uploads: `.npy` arrays and CSV text of 6-axis samples, the sample cap and the
//! resampling to the IMU tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::imu::preprocess;

fuzz_target!(|bytes: &[u8]| {
    let _ = preprocess(bytes);
});
