//! IMU uploads: `.npy` arrays and CSV text of 6-axis samples, the sample cap and the
//! resampling to the IMU tower's input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::imu::preprocess;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        let _ = preprocess(bytes);
    }
);
