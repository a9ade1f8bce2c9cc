//! Compressed audio for ImageBind: FLAC, Ogg Vorbis and MP3 versions of two WAV fixtures, made
//! by tests/fixtures/imagebind/make_audio_formats.py. FLAC must decode to the WAV's samples;
//! lossy files to ffmpeg's decode (within decoder rounding); every file must embed like the
//! official pipeline fed the same waveform. Also: WAV sample formats decode bit-exactly, and
//! malformed files fail with a clear message.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use omnibind::embed::preprocess::audio::{decode_audio, Waveform, MAX_SAMPLES};
use omnibind::embed::{load_encoder, EmbedError, Encoder, Input, Modality, ModelSpec};

use crate::common::{cosine, fixtures, load_tensors, max_abs_diff};

/// Lossy decodes vs ffmpeg 5.1's (`mp3float`, native `vorbis`): both decoders compute in
/// float32; measured max abs diffs 1.2e-7 to 6.0e-7 on the sample windows (0.9e-6 over whole files).
const VORBIS_PCM_MAX_ABS: f32 = 5e-7;
const MP3_PCM_MAX_ABS: f32 = 2e-6;
/// Embeddings vs the official pipeline on the same waveform.
const EMB_MIN_COS: f32 = 0.9999;
const EMB_MAX_ABS: f32 = 1e-4;
/// Embeddings of a lossy file vs the embedding of the WAV it was encoded from (measured 0.9946
/// to 0.9992 with the tiny random-weight model).
const LOSSY_VS_WAV_MIN_COS: f32 = 0.99;

const LOSSLESS: &[(&str, &str)] = &[(
    "speech_16k_mono_s16_0.9s.flac",
    "speech_16k_mono_s16_0.9s.wav",
)];
const LOSSY: &[(&str, &str)] = &[
    (
        "speech_16k_mono_s16_0.9s.ogg",
        "speech_16k_mono_s16_0.9s.wav",
    ),
    (
        "speech_16k_mono_s16_0.9s.mp3",
        "speech_16k_mono_s16_0.9s.wav",
    ),
    (
        "speech_48k_stereo_s16_1.6s.ogg",
        "speech_48k_stereo_s16_1.6s.wav",
    ),
    (
        "speech_48k_stereo_s16_1.6s.mp3",
        "speech_48k_stereo_s16_1.6s.wav",
    ),
];

fn dir() -> PathBuf {
    fixtures().join("imagebind")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join("audio").join(name)).unwrap()
}

fn decode(name: &str) -> Waveform {
    decode_audio(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn refs() -> HashMap<String, Tensor> {
    load_tensors(&dir().join("reference/audio_formats.safetensors.gz"))
}

fn scalar(refs: &HashMap<String, Tensor>, key: &str) -> usize {
    refs[key]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()[0] as usize
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn encoder() -> std::sync::Arc<dyn Encoder> {
    let model = dir().join("models/imagebind-tiny");
    load_encoder(&ModelSpec::new("imagebind-tiny", model.to_str().unwrap())).unwrap()
}

fn audio(bytes: Vec<u8>) -> Input {
    Input::Bytes {
        modality: Modality::Audio,
        bytes: bytes.into(),
    }
}

/// A RIFF/WAVE file: `fmt ` (plain, or WAVE_FORMAT_EXTENSIBLE) and `data` chunks.
fn wav_bytes(tag: u16, bits: u16, channels: u16, rate: u32, data: &[u8], ext: bool) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut fmt = Vec::new();
    fmt.extend((if ext { 0xfffe } else { tag }).to_le_bytes());
    fmt.extend(channels.to_le_bytes());
    fmt.extend(rate.to_le_bytes());
    fmt.extend((rate * block as u32).to_le_bytes());
    fmt.extend(block.to_le_bytes());
    fmt.extend(bits.to_le_bytes());
    if ext {
        fmt.extend(22u16.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        fmt.extend(if channels == 2 { 3u32 } else { 4u32 }.to_le_bytes());
        fmt.extend(tag.to_le_bytes());
        // The rest of the KSDATAFORMAT_SUBTYPE GUID.
        fmt.extend([
            0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
        ]);
    }
    let mut out = b"RIFF".to_vec();
    out.extend((4 + 8 + fmt.len() as u32 + 8 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend((fmt.len() as u32).to_le_bytes());
    out.extend(fmt);
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

/// Samples as `torchaudio.load` returns them, read straight from a PCM/float WAV's `data`
/// chunk (first `fmt `/`data` chunks; the layout the fixtures use).
fn torchaudio_wav(bytes: &[u8]) -> Waveform {
    let (mut pos, mut fmt, mut data) = (12, None, None);
    while pos + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &bytes[pos + 8..(pos + 8 + size).min(bytes.len())];
        let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
        match &bytes[pos..pos + 4] {
            b"fmt " => {
                let tag = if u16_at(0) == 0xfffe {
                    u16_at(24)
                } else {
                    u16_at(0)
                };
                let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
                fmt = Some((tag, u16_at(2) as usize, rate, u16_at(14) as usize));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        pos += 8 + size + (size & 1);
    }
    let ((tag, ch, rate, bits), data) = (fmt.unwrap(), data.unwrap());
    let scale = (1u64 << (bits - 1)) as f64;
    let samples: Vec<f32> = data
        .chunks_exact(bits / 8)
        .map(|b| match (tag, bits) {
            (3, 32) => f32::from_le_bytes(b.try_into().unwrap()),
            (1, 8) => ((b[0] as f64 - 128.0) / 128.0) as f32,
            (1, _) => {
                // Sign-extend the little-endian integer from its top byte.
                let mut v = (b[bits / 8 - 1] as i8) as i64;
                for &x in b[..bits / 8 - 1].iter().rev() {
                    v = (v << 8) | x as i64;
                }
                (v as f64 / scale) as f32
            }
            other => panic!("WAV format {other:?}"),
        })
        .collect();
    let mut channels = vec![Vec::new(); ch];
    for (i, s) in samples.into_iter().enumerate() {
        channels[i % ch].push(s);
    }
    Waveform {
        sample_rate: rate,
        channels,
    }
}

fn assert_bit_identical(what: &str, ours: &Waveform, want: &Waveform) {
    assert_eq!(ours.sample_rate, want.sample_rate, "{what}: sample rate");
    assert_eq!(ours.channels.len(), want.channels.len(), "{what}: channels");
    for (c, (a, b)) in ours.channels.iter().zip(&want.channels).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: channel {c} length");
        if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
            panic!("{what}: channel {c} sample {i}: {} vs {}", a[i], b[i]);
        }
    }
}

#[test]
fn wav_samples_of_every_format_decode_bit_exactly() {
    let mut checked = 0;
    for e in std::fs::read_dir(dir().join("audio")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "wav") {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_bit_identical(
                &name,
                &decode_audio(&bytes).unwrap(),
                &torchaudio_wav(&bytes),
            );
            checked += 1;
        }
    }
    assert!(checked >= 7);

    // Every integer width at its extremes, and floats, stereo, plain and extensible headers.
    let ints: Vec<i64> = (0..997).map(|i| (i * 7919 % 997) - 498).collect();
    for (bits, ext) in [
        (8, false),
        (16, false),
        (24, true),
        (24, false),
        (32, false),
    ] {
        let full = 1i64 << (bits - 1);
        let mut data = Vec::new();
        for v in ints
            .iter()
            .map(|v| v * full / 498)
            .chain([-full, full - 1, 0])
            .map(|v| v.clamp(-full, full - 1))
        {
            let v = if bits == 8 { v + 128 } else { v };
            data.extend(&v.to_le_bytes()[..bits / 8]);
        }
        let bytes = wav_bytes(1, bits as u16, 2, 22050, &data, ext);
        let what = format!("{bits}-bit PCM (extensible: {ext})");
        let w = decode_audio(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_bit_identical(&what, &w, &torchaudio_wav(&bytes));
        assert!(
            w.channels.iter().flatten().any(|&v| v == -1.0),
            "{what}: full scale"
        );
    }
    let floats: Vec<u8> = (0..1000)
        .flat_map(|i| ((i as f32 * 0.37).sin() * 0.999).to_le_bytes())
        .collect();
    let bytes = wav_bytes(3, 32, 1, 8000, &floats, true);
    assert_bit_identical(
        "32-bit float",
        &decode_audio(&bytes).unwrap(),
        &torchaudio_wav(&bytes),
    );
}

#[test]
fn flac_decodes_to_the_wav_samples() {
    let refs = refs();
    for (flac, wav) in LOSSLESS {
        let ours = decode(flac);
        assert_bit_identical(flac, &ours, &decode(wav));
        assert_eq!(ours.len(), scalar(&refs, &format!("{flac}.frames")));
    }
}

#[test]
fn lossy_files_decode_like_ffmpeg() {
    let refs = refs();
    for (name, wav) in LOSSY {
        let ours = decode(name);
        let orig = decode(wav);
        // Gapless: encoder delay and padding are trimmed, the length is the original's.
        assert_eq!(
            (ours.sample_rate, ours.channels.len(), ours.len()),
            (orig.sample_rate, orig.channels.len(), orig.len()),
            "{name}: rate, channels, length"
        );
        assert_eq!(ours.len(), scalar(&refs, &format!("{name}.frames")));
        let start = scalar(&refs, &format!("{name}.pcm_start"));
        let want = rows(&refs[&format!("{name}.pcm")]);
        assert_eq!(want.len(), ours.channels.len());
        let d = want
            .iter()
            .zip(&ours.channels)
            .map(|(w, o)| max_abs_diff(&o[start..start + w.len()], w))
            .fold(0f32, f32::max);
        let tol = if name.ends_with(".mp3") {
            MP3_PCM_MAX_ABS
        } else {
            VORBIS_PCM_MAX_ABS
        };
        eprintln!(
            "{name}: {} x {} samples at {} Hz, max abs diff to ffmpeg {d:.2e} ({} samples from {start})",
            ours.channels.len(),
            ours.len(),
            ours.sample_rate,
            want[0].len()
        );
        assert!(
            d <= tol,
            "{name}: decoded samples differ from ffmpeg's by {d:e} (bound {tol:e})"
        );
        // Not the source: a lossy codec changes the samples visibly.
        let to_wav = max_abs_diff(&ours.channels[0], &orig.channels[0]);
        assert!(to_wav > 1e-3, "{name}: {to_wav}");
    }
}

#[test]
fn every_format_embeds_like_the_official_pipeline() {
    let refs = refs();
    let enc = encoder();
    let names: Vec<&str> = LOSSLESS
        .iter()
        .chain(LOSSY)
        .flat_map(|(f, w)| [*f, *w])
        .collect();
    let out: Vec<Vec<f32>> = enc
        .embed_batch(&names.iter().map(|n| audio(read(n))).collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .zip(&names)
        .map(|(r, n)| r.unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect();
    for (pair, emb) in names.chunks(2).zip(out.chunks(2)) {
        let (name, wav) = (pair[0], pair[1]);
        let want = normalized(&rows(&refs[&format!("{name}.output")])[0]);
        let (d, c) = (max_abs_diff(&emb[0], &want), cosine(&emb[0], &want));
        let to_wav = cosine(&emb[0], &emb[1]);
        eprintln!(
            "{name}: vs official {c:.8} / max abs {d:.2e}; vs the embedding of {wav}: cosine {to_wav:.6}"
        );
        assert!(
            c >= EMB_MIN_COS && d <= EMB_MAX_ABS,
            "{name}: embedding vs the official pipeline: cosine {c}, max abs diff {d:e}"
        );
        if LOSSLESS.iter().any(|(f, _)| *f == name) {
            assert_eq!(emb[0], emb[1], "{name}: same embedding as {wav}");
        } else {
            assert!(
                to_wav >= LOSSY_VS_WAV_MIN_COS,
                "{name}: cosine to the embedding of {wav} is {to_wav}"
            );
        }
    }
}

fn err_of(bytes: &[u8]) -> EmbedError {
    match decode_audio(bytes) {
        Ok(w) => panic!(
            "decoded {} x {} samples from a malformed file",
            w.channels.len(),
            w.len()
        ),
        Err(e) => {
            eprintln!("refused: {e}");
            e
        }
    }
}

#[test]
fn malformed_audio_fails_with_a_clear_message() {
    // A WAV header with an empty data chunk.
    let e = err_of(&wav_bytes(1, 16, 1, 16000, &[], false));
    assert!(
        matches!(&e, EmbedError::InvalidInput(m) if m.contains("no audio samples")),
        "{e}"
    );

    // Float WAV with NaN and infinite samples.
    let mut data: Vec<u8> = (0..100)
        .flat_map(|i| (i as f32 / 100.0).to_le_bytes())
        .collect();
    data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    data[80..84].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let e = err_of(&wav_bytes(3, 32, 1, 16000, &data, false));
    assert!(
        matches!(&e, EmbedError::InvalidInput(m) if m.contains("NaN") && m.contains("sample 10")),
        "{e}"
    );

    // A header claiming ~2^31 samples: refused before decoding.
    let mut huge = wav_bytes(1, 16, 1, 16000, &[0; 64], false);
    let n = huge.len();
    huge[n - 68..n - 64].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    huge[4..8].copy_from_slice(&0xffff_ff24u32.to_le_bytes());
    let e = err_of(&huge);
    assert!(
        matches!(&e, EmbedError::InvalidInput(m) if m.contains(&format!("limit of {MAX_SAMPLES}"))),
        "{e}"
    );

    // Truncated files: half of the FLAC and of the MP3 (both state their length).
    for name in [
        "speech_16k_mono_s16_0.9s.flac",
        "speech_16k_mono_s16_0.9s.mp3",
        "speech_48k_stereo_s16_1.6s.mp3",
    ] {
        let bytes = read(name);
        let e = err_of(&bytes[..bytes.len() / 2]);
        assert!(
            matches!(&e, EmbedError::Decode(m) if m.contains("truncated")),
            "{name}: {e}"
        );
    }

    // Without its LAME/Info frame an MP3 states no exact length: no gapless trimming and no
    // truncation check, the whole stream decodes (encoder delay and padding included).
    let mp3 = read("speech_16k_mono_s16_0.9s.mp3");
    // MPEG-2 layer III, 64 kbit/s at 16 kHz: 72 * 64000 / 16000 bytes per frame, no padding.
    let frame = 288;
    assert!(
        mp3[frame] == 0xff && mp3[frame + 1] & 0xe0 == 0xe0,
        "frame sync"
    );
    let plain = &mp3[frame..];
    let w = decode_audio(plain).unwrap();
    assert!(
        w.len() > 14400 && w.len().is_multiple_of(576),
        "{} samples",
        w.len()
    );
    let w = decode_audio(&plain[..plain.len() / 2]).unwrap();
    assert!(w.len() < 14400, "{} samples", w.len());

    // Random bytes behind an Ogg page signature.
    let mut junk = b"OggS".to_vec();
    junk.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let e = err_of(&junk);
    assert!(
        matches!(&e, EmbedError::Decode(m) | EmbedError::UnsupportedFormat(m) if m.starts_with("Ogg")),
        "{e}"
    );

    // Not audio at all.
    let e = err_of(b"just some text, not a sound file at all");
    assert!(
        matches!(&e, EmbedError::UnsupportedFormat(m) if m.contains("WAV, FLAC, MP3 or Ogg Vorbis")),
        "{e}"
    );

    // Through the encoder: each bad input fails alone, the good one embeds.
    let bad = wav_bytes(1, 16, 1, 16000, &[], false);
    let out = encoder()
        .embed_batch(&[
            audio(bad),
            audio(junk),
            audio(read("speech_16k_mono_s16_0.9s.ogg")),
        ])
        .unwrap();
    assert!(out[0].is_err() && out[1].is_err());
    assert_eq!(out[2].as_ref().unwrap().len(), 24);
}
