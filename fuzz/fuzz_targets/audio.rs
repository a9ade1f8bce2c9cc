//! Audio uploads: container and codec probing (WAV, FLAC, MP3, Ogg Vorbis), the duration and
//! channel caps read from headers, resampling and the filterbank of the audio tower.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omnibind::embed::preprocess::audio::{preprocess, AudioPreprocessConfig, Fbank, SAMPLE_RATE};

fn setup() -> &'static (Fbank, AudioPreprocessConfig) {
    static SETUP: OnceLock<(Fbank, AudioPreprocessConfig)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cfg = AudioPreprocessConfig {
            num_mel_bins: 16,
            target_len: 24,
            ..AudioPreprocessConfig::default()
        };
        (Fbank::new(SAMPLE_RATE, cfg.num_mel_bins).unwrap(), cfg)
    })
}

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one that omnibind contains inside a
        // third-party parser (`omnibind::guard`); with the default hook back, only a panic that
        // escapes omnibind's API fails the run.
        let _ = std::panic::take_hook();
    },
    |bytes: &[u8]| {
        let (fbank, cfg) = setup();
        if let Ok(out) = preprocess(bytes, fbank, cfg) {
            assert_eq!(out.len(), cfg.clips * cfg.num_mel_bins * cfg.target_len);
        }
    }
);
