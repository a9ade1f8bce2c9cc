//! Spoken annotations with espeak-ng (the Debian package `espeak-ng`): each emoji's annotation
//! said by several voices at several rates and pitches, as 16-bit mono WAV files. The text is
//! passed on standard input, never as an argument.
//!
//! Variants are drawn per emoji from a seeded generator: distinct voices from [`VOICES`], a
//! rate in words per minute from [`RATES`] and a pitch (0-99) from [`PITCHES`].

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::rng::Rng;

/// Voices (espeak-ng voice names with variants) the variants are drawn from.
pub const VOICES: &[&str] = &[
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us+f3",
    "en-us+m3",
    "en-gb-x-gbclan+f2",
];
/// Speaking rates, words per minute.
pub const RATES: &[u32] = &[130, 150, 175];
/// Pitches (espeak-ng's 0-99 scale).
pub const PITCHES: &[u32] = &[35, 50, 65];

/// One spoken variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voice {
    pub voice: String,
    pub rate: u32,
    pub pitch: u32,
}

/// `n` variants for one emoji: distinct voices, random rate and pitch.
pub fn variants(rng: &mut Rng, n: usize) -> Vec<Voice> {
    let mut voices: Vec<&str> = VOICES.to_vec();
    // Fisher-Yates with the seeded generator.
    for i in (1..voices.len()).rev() {
        voices.swap(i, rng.index(i + 1));
    }
    voices
        .into_iter()
        .cycle()
        .take(n)
        .map(|v| Voice {
            voice: v.to_owned(),
            rate: RATES[rng.index(RATES.len())],
            pitch: PITCHES[rng.index(PITCHES.len())],
        })
        .collect()
}

/// `espeak-ng --version` without its data path (e.g. `eSpeak NG text-to-speech: 1.51`), or an
/// error saying how to install it.
pub fn espeak_version() -> Result<String> {
    let out = Command::new("espeak-ng")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "espeak-ng is needed for the audio modality but could not be run ({e}); \
                 install it (Debian/Ubuntu: `apt-get install espeak-ng`) or pass --no-audio"
            )
        })?;
    if !out.status.success() {
        bail!("`espeak-ng --version` failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .split("Data at:")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Speaks `text` with `voice` into the WAV file `out`.
pub fn speak(text: &str, voice: &Voice, out: &Path) -> Result<()> {
    let mut child = Command::new("espeak-ng")
        .args(["-v", &voice.voice])
        .args(["-s", &voice.rate.to_string()])
        .args(["-p", &voice.pitch.to_string()])
        .arg("-w")
        .arg(out)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running espeak-ng")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "espeak-ng failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_seeded_and_distinct() {
        let a = variants(&mut Rng::for_key(1, "1F600"), 3);
        assert_eq!(a, variants(&mut Rng::for_key(1, "1F600"), 3));
        assert_eq!(a.len(), 3);
        assert!(a[0].voice != a[1].voice && a[1].voice != a[2].voice && a[0].voice != a[2].voice);
        assert!(a
            .iter()
            .all(|v| RATES.contains(&v.rate) && PITCHES.contains(&v.pitch)));
    }

    /// Runs only where espeak-ng is installed (not in CI).
    #[test]
    fn speaks_a_wav_when_espeak_is_installed() {
        if espeak_version().is_err() {
            eprintln!("espeak-ng not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.wav");
        let v = &variants(&mut Rng::new(0), 1)[0];
        speak("grinning face", v, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(b"RIFF") && bytes.len() > 5000);
    }
}
