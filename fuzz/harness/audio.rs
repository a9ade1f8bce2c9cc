//! Audio uploads: container and codec probing (WAV, FLAC, MP3, Ogg Vorbis), the duration and
//! channel caps read from headers, resampling and the filterbank of the audio tower.

use std::sync::OnceLock;

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

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(bytes: &[u8]) {
    let (fbank, cfg) = setup();
    if let Ok(out) = preprocess(bytes, fbank, cfg) {
        assert_eq!(out.len(), cfg.clips * cfg.num_mel_bins * cfg.target_len);
    }
}
