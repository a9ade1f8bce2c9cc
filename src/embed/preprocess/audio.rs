//! Audio preprocessing of ImageBind: decoding, resampling to 16 kHz, clip sampling and the
//! Kaldi-compatible log-mel filterbank, as the official `data.py` does it
//! (`load_and_transform_audio_data`, `waveform2melspec`).
//!
//! - Decoding ([`decode_audio`], with symphonia): WAV (8/16/24/32-bit integer PCM, 32/64-bit
//!   float), FLAC, MP3 and Ogg Vorbis, recognised by content, any sample rate and channel count;
//!   samples scaled to [-1, 1) as `torchaudio.load` does (bit-exact for WAV and FLAC), lossy
//!   codecs decoded gapless. Other containers and codecs are refused with
//!   [`EmbedError::UnsupportedFormat`]; empty, over-long ([`MAX_SAMPLES`]), non-finite, corrupt
//!   or truncated audio with a message saying which.
//! - Resampling: [`resample`] is torchaudio's `functional.resample` (windowed-sinc, Hann window,
//!   6 zero crossings, roll-off 0.99), computed from the same kernel formula.
//! - Memory: a stream whose header states its exact length, rate and channels is decoded keeping
//!   only the input samples its clips read ([`decode_clip_windows_within`]), bit-identical to
//!   decoding it whole; others are decoded whole within the decode budget
//!   ([`crate::embed::budget`]).
//! - Clips: three 2-second clips starting at 0, (D-2)/3 and 2(D-2)/3 seconds of a D-second file
//!   (pytorchvideo's `ConstantClipsPerVideoSampler` in exact rational arithmetic), cut at the end
//!   of the file; each clip has its mean removed in place (the official code subtracts the mean
//!   from a view of the waveform, so overlapping clips see each other's subtraction).
//! - Filterbank: [`Fbank`] is `torchaudio.compliance.kaldi.fbank` with ImageBind's options
//!   (128 bins, 25 ms Hann windows every 10 ms, pre-emphasis 0.97, DC removal, power spectrum,
//!   no dither, no energy), of the first channel, computed in f64.
//! - The `[mels, frames]` filterbank is cut or zero-padded to 204 frames, then normalised with
//!   mean -4.268 and standard deviation 9.138.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use super::decoder_panicked;
use crate::embed::{EmbedError, Reservation, UploadBudget};
use crate::guard::contain;

/// The sample rate ImageBind's audio tower is trained on.
pub const SAMPLE_RATE: u32 = 16_000;
/// Normalisation of the filterbank (official `load_and_transform_audio_data` defaults).
pub const FBANK_MEAN: f32 = -4.268;
pub const FBANK_STD: f32 = 9.138;
/// Longest accepted input, in samples per channel (one hour at 48 kHz).
pub const MAX_SAMPLES: usize = 48_000 * 3600;

/// Most channels an audio upload may have (checked from a WAV header before decoding).
pub const MAX_CHANNELS: u16 = 64;

/// Checks a WAV file's `fmt ` chunk before the decoder reads it: 1 to [`MAX_CHANNELS`]
/// channels, a non-zero sample rate, at most 64 bits per sample. symphonia multiplies channels
/// by bytes per sample in 16 bits unchecked (found by the `audio` fuzz target: 64,513 channels).
/// The decoder's probe looks for a container's marker past the first byte, so every
/// `RIFF....WAVE` header in the bytes is checked, and every `fmt ` chunk in it. Other containers, and WAV files whose chunks
/// cannot be walked, are left to the decoder.
fn check_wav_headers(bytes: &[u8]) -> Result<(), EmbedError> {
    let mut from = 0;
    while let Some(i) = bytes[from..].windows(4).position(|w| w == b"RIFF") {
        check_wav_header(&bytes[from + i..])?;
        from += i + 4;
    }
    Ok(())
}

/// [`check_wav_headers`] for a header at the start of `bytes`.
fn check_wav_header(bytes: &[u8]) -> Result<(), EmbedError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Ok(());
    }
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 12usize;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(at + 4)) {
        if id == b"fmt " {
            let (Some(channels), Some(rate), Some(bits)) =
                (u16_at(at + 10), u32_at(at + 12), u16_at(at + 22))
            else {
                return Ok(());
            };
            if channels == 0 || channels > MAX_CHANNELS {
                return Err(EmbedError::InvalidInput(format!(
                    "WAV: {channels} channels (1 to {MAX_CHANNELS} are accepted)"
                )));
            }
            if rate == 0 || bits > 64 {
                return Err(EmbedError::InvalidInput(format!(
                    "WAV: invalid format ({rate} Hz, {bits} bits per sample)"
                )));
            }
            // The decoder reads every `fmt ` chunk before the data, the last one winning: check
            // them all.
        }
        at = at
            .saturating_add(8)
            .saturating_add(size as usize + (size as usize & 1));
    }
    Ok(())
}

/// Decoded audio: `channels` planar channels of equal length.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Waveform {
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a WAV, FLAC, MP3 or Ogg Vorbis file (found by its content, not a name) with
/// symphonia, as `torchaudio.load` returns it: planar float channels, integer PCM divided by
/// 2^(bits-1) (8-bit samples are unsigned, centred on 128), float samples as stored, lossy codecs
/// as their decoder's float output.
///
/// - WAV: 8/16/24/32-bit integer PCM and 32/64-bit float (plain or WAVE_FORMAT_EXTENSIBLE),
///   bit-identical to reading the samples directly.
/// - FLAC: any bit depth up to 32 (decoded samples are exact integers).
/// - MP3 (MPEG-1/2 layer III) and Vorbis in Ogg: decoded with gapless trimming on, so the
///   encoder delay and padding that LAME records in its Xing/Info header (and Vorbis's granule
///   positions) are removed and the waveform lines up with the original audio, as ffmpeg
///   decodes it.
///
/// Errors: unrecognised containers or codecs are [`EmbedError::UnsupportedFormat`]; corrupt
/// streams, and streams that end before their stated length (all but MP3 files without a LAME
/// header, whose length is only estimated), [`EmbedError::Decode`]; audio with no samples, longer than [`MAX_SAMPLES`]
/// per channel (checked against the stated duration before decoding, and while decoding), or
/// with NaN or infinite samples [`EmbedError::InvalidInput`]; a file on which symphonia panics
/// ([`crate::guard`]) is [`EmbedError::Decode`].
pub fn decode_audio(bytes: &[u8]) -> Result<Waveform, EmbedError> {
    decode_audio_within(bytes, &UploadBudget::default()).map(|(wave, _)| wave)
}

/// [`decode_audio`] within a decode budget. Before the first packet is decoded, the memory of
/// the samples the header declares (frames x channels, and their copies resampled to 16 kHz:
/// [`decode_cost`]) is reserved in `budget`; a stream whose header gives no length reserves the
/// per-decode limit. Samples are counted while decoding, and a stream that outgrows its
/// reservation grows it or stops at the limit. The reservation is returned so that the caller
/// holds it while it works on the samples.
pub fn decode_audio_within<'b>(
    bytes: &[u8],
    budget: &'b UploadBudget,
) -> Result<(Waveform, Reservation<'b>), EmbedError> {
    // The demuxing and decoding loop interleaves symphonia's calls with this module's checks, so
    // the whole of it runs under the guard.
    contain(|| decode_audio_unguarded(bytes, budget))
        .unwrap_or_else(|panic| Err(decoder_panicked(sniff(bytes), &panic)))
}

/// Bytes of decoding up to 1 MiB of symphonia's buffers, the filterbank and the clips.
const AUDIO_OVERHEAD: u64 = 1 << 20;

/// Most bytes [`preprocess`] holds for `frames` frames of `channels` channels at `rate` Hz from
/// a file of `file_len` bytes: the file, the decoded f32 samples, their copies resampled to
/// 16 kHz and the resampling filter.
pub fn decode_cost(file_len: u64, frames: u64, channels: u64, rate: u32) -> u64 {
    let rate = rate.max(1) as u64;
    let resampled = if rate == SAMPLE_RATE as u64 {
        0
    } else {
        (frames as u128 * SAMPLE_RATE as u128).div_ceil(rate as u128) as u64
    };
    let kernel = 4 * resample_kernel_len(rate.min(u32::MAX as u64) as u32, SAMPLE_RATE) as u64;
    file_len
        .saturating_add(
            4u64.saturating_mul(channels)
                .saturating_mul(frames.saturating_add(resampled)),
        )
        .saturating_add(kernel.min(4 * MAX_RESAMPLE_KERNEL as u64))
        .saturating_add(AUDIO_OVERHEAD)
}

/// An opened audio stream: its demuxer and decoder, and what its header says.
struct OpenedAudio<'s> {
    reader: Box<dyn symphonia::core::formats::FormatReader + 's>,
    decoder: Box<dyn symphonia::core::codecs::audio::AudioDecoder>,
    track_id: u32,
    /// Samples per channel the header states.
    expected: Option<u64>,
    /// Whether `expected` is exact (all but MP3 files without a LAME header).
    exact_length: bool,
    rate: Option<u32>,
    channels: Option<u64>,
    /// The container's name, for messages.
    what: &'static str,
}

/// A symphonia error as an [`EmbedError`] about `what`.
fn sym_error(what: &str, e: symphonia::core::errors::Error) -> EmbedError {
    use symphonia::core::errors::Error as SymError;
    match e {
        SymError::Unsupported(f) => {
            EmbedError::UnsupportedFormat(format!("{what}: unsupported feature: {f}"))
        }
        SymError::LimitError(l) => EmbedError::InvalidInput(format!("{what}: limit reached: {l}")),
        SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            EmbedError::Decode(format!(
                "{what}: file is truncated (unexpected end of data)"
            ))
        }
        e => EmbedError::Decode(format!("{what}: {e}")),
    }
}

/// Probes `bytes` and opens its default audio track's decoder, reading headers only.
fn open_audio(bytes: &[u8]) -> Result<OpenedAudio<'_>, EmbedError> {
    use symphonia::core::codecs::audio::well_known::CODEC_ID_MP3;
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::codecs::CodecParameters;
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
    use symphonia::core::meta::MetadataOptions;

    if bytes.is_empty() {
        return Err(EmbedError::InvalidInput("audio file is empty".into()));
    }
    check_wav_headers(bytes)?;
    let what = sniff(bytes);
    let decode_err = |e: SymError| sym_error(what, e);
    let mss = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let reader = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(_) => EmbedError::UnsupportedFormat(format!(
                "audio must be WAV, FLAC, MP3 or Ogg Vorbis; got {what}"
            )),
            e => decode_err(e),
        })?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| EmbedError::Decode(format!("{what}: no audio track")))?;
    let Some(CodecParameters::Audio(params)) = &track.codec_params else {
        return Err(EmbedError::Decode(format!("{what}: no audio track")));
    };
    // The stated length is exact for WAV, FLAC, Ogg and LAME-tagged MP3; other MP3 files get an
    // estimate from the bitrate, good for the size check but not for detecting truncation.
    let exact_length = params.codec != CODEC_ID_MP3 || track.delay.is_some();
    let (track_id, expected) = (track.id, track.num_frames);
    if let Some(n) = expected.filter(|&n| n > MAX_SAMPLES as u64) {
        return Err(too_long(n));
    }
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default().gapless(true))
        .map_err(|e| match e {
            SymError::Unsupported(_) => EmbedError::UnsupportedFormat(format!(
                "{what}: codec not supported (audio must be WAV, FLAC, MP3 or Ogg Vorbis)"
            )),
            e => decode_err(e),
        })?;
    let (rate, channels) = (
        params.sample_rate,
        params.channels.as_ref().map(|c| c.count() as u64),
    );
    Ok(OpenedAudio {
        reader,
        decoder,
        track_id,
        expected,
        exact_length,
        rate,
        channels,
        what,
    })
}

fn decode_audio_unguarded<'b>(
    bytes: &[u8],
    budget: &'b UploadBudget,
) -> Result<(Waveform, Reservation<'b>), EmbedError> {
    let OpenedAudio {
        mut reader,
        mut decoder,
        track_id,
        expected,
        exact_length,
        rate: declared_rate,
        channels: declared_channels,
        what,
    } = open_audio(bytes)?;
    let decode_err = |e| sym_error(what, e);
    let mut sample_rate = declared_rate.unwrap_or(0);
    let file_len = bytes.len() as u64;
    let mut held = match (expected, declared_channels, declared_rate) {
        (Some(n), Some(c), Some(rate)) if c > 0 && rate > 0 => {
            let need = decode_cost(file_len, n, c, rate);
            // An estimated length (MP3 without a LAME header) gets room for the vectors to
            // double past it, so that siblings in the upload cannot starve its growth.
            let room = if exact_length {
                need
            } else {
                decode_cost(file_len, 2 * n + 65_536, c, rate)
                    .min(budget.limits().per_decode)
                    .max(need)
            };
            budget.reserve(
                room,
                format_args!("{what} of {n} samples per channel, {c} channels at {rate} Hz"),
            )?
        }
        // No length or layout in the header: count while decoding, up to the per-decode limit.
        _ => budget.reserve(
            budget.limits().per_decode,
            format_args!("{what} of unstated length"),
        )?,
    };
    // A stated exact length is allocated once rather than doubled as it grows.
    let capacity = expected.filter(|_| exact_length).map_or(0, |n| n as usize);
    let mut channels: Vec<Vec<f32>> = Vec::new();
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(decode_err(e)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(decode_err)?;
        if buf.frames() == 0 {
            continue;
        }
        let (rate, planes) = (buf.spec().rate(), buf.num_planes());
        if channels.is_empty() {
            if planes == 0 || rate == 0 {
                return Err(EmbedError::Decode(format!(
                    "{what}: stream has no channels or no sample rate"
                )));
            }
            sample_rate = rate;
            if decode_cost(file_len, capacity as u64, planes as u64, rate) > held.bytes() {
                // The decoded layout has more channels than the header said.
                let cost = decode_cost(file_len, expected.unwrap_or(0), planes as u64, rate);
                held.grow_to(cost, format_args!("{what} of {planes} channels"))?;
            }
            channels = (0..planes).map(|_| Vec::with_capacity(capacity)).collect();
        } else if planes != channels.len() || rate != sample_rate {
            return Err(EmbedError::UnsupportedFormat(format!(
                "{what}: channel count or sample rate changes within the stream"
            )));
        }
        let total = channels[0].len() + buf.frames();
        if total > MAX_SAMPLES {
            return Err(too_long(total as u64));
        }
        if total > channels[0].capacity() {
            // Growing doubles the vectors: count what they will hold before they do.
            let grown = (total as u64).max(2 * channels[0].capacity() as u64);
            let cost = decode_cost(file_len, grown, channels.len() as u64, sample_rate);
            if cost > held.bytes() {
                held.grow_to(
                    cost,
                    format_args!("{what} of more than {total} samples per channel"),
                )?;
            }
        }
        append_planes(&buf, &mut channels);
    }
    let frames = channels.first().map_or(0, Vec::len);
    if frames == 0 {
        return Err(EmbedError::InvalidInput(format!(
            "{what} contains no audio samples"
        )));
    }
    if let Some(n) = expected.filter(|&n| exact_length && (frames as u64) < n) {
        return Err(EmbedError::Decode(format!(
            "{what}: file is truncated ({frames} of {n} samples per channel decoded)"
        )));
    }
    if let Some(i) = channels.iter().flatten().position(|v| !v.is_finite()) {
        return Err(EmbedError::InvalidInput(format!(
            "{what} contains NaN or infinite samples (first at sample {})",
            i % frames
        )));
    }
    Ok((
        Waveform {
            sample_rate,
            channels,
        },
        held,
    ))
}

fn too_long(frames: u64) -> EmbedError {
    EmbedError::InvalidInput(format!(
        "audio of {frames} samples per channel exceeds the limit of {MAX_SAMPLES}"
    ))
}

/// Whether `bytes` start with an MPEG audio layer III frame header: the 11-bit sync word, a
/// defined MPEG version, layer III, a bit rate other than "free" or "bad" and a defined sample
/// rate. Only the sync word is not enough: `FF FE` also begins every UTF-16 text (its byte
/// order mark), which is not audio at all.
pub fn is_mp3_frame_header(bytes: &[u8]) -> bool {
    let [0xff, b1, b2, ..] = *bytes else {
        return false;
    };
    let version = (b1 >> 3) & 0b11;
    let layer = (b1 >> 1) & 0b11;
    let bitrate = b2 >> 4;
    let rate = (b2 >> 2) & 0b11;
    b1 & 0xe0 == 0xe0 && version != 0b01 && layer == 0b01 && !matches!(bitrate, 0 | 15) && rate != 3
}

/// A name for the container, from its first bytes, for messages.
fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        "WAV"
    } else if bytes.starts_with(b"fLaC") {
        "FLAC"
    } else if bytes.starts_with(b"OggS") {
        "Ogg"
    } else if bytes.starts_with(b"ID3") || is_mp3_frame_header(bytes) {
        "MP3"
    } else {
        "audio of an unrecognised format"
    }
}

/// Appends a decoded buffer's planes to `channels` as torchaudio scales them: integers divided
/// by 2^(bits-1) in f64, then rounded to f32 (unsigned ones centred first).
fn append_planes(
    buf: &symphonia::core::audio::GenericAudioBufferRef<'_>,
    channels: &mut [Vec<f32>],
) {
    append_plane_range(buf, channels, 0..buf.frames());
}

/// [`append_planes`] for the frames `range` of the buffer only.
fn append_plane_range(
    buf: &symphonia::core::audio::GenericAudioBufferRef<'_>,
    channels: &mut [Vec<f32>],
    range: std::ops::Range<usize>,
) {
    use symphonia::core::audio::sample::Sample;
    use symphonia::core::audio::{Audio, GenericAudioBufferRef as B};
    fn push_range<S: Sample>(
        planes: symphonia::core::audio::AudioPlanes<'_, S>,
        channels: &mut [Vec<f32>],
        range: std::ops::Range<usize>,
        f: impl Fn(S) -> f32,
    ) {
        for (plane, out) in planes.zip(channels.iter_mut()) {
            out.extend(plane[range.clone()].iter().map(|&s| f(s)));
        }
    }
    const S8: f64 = (1u64 << 7) as f64;
    const S16: f64 = (1u64 << 15) as f64;
    const S24: f64 = (1u64 << 23) as f64;
    const S32: f64 = (1u64 << 31) as f64;
    match buf {
        B::U8(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            ((s as f64 - S8) / S8) as f32
        }),
        B::U16(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            ((s as f64 - S16) / S16) as f32
        }),
        B::U24(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            ((s.inner() as f64 - S24) / S24) as f32
        }),
        B::U32(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            ((s as f64 - S32) / S32) as f32
        }),
        B::S8(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            (s as f64 / S8) as f32
        }),
        B::S16(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            (s as f64 / S16) as f32
        }),
        B::S24(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            (s.inner() as f64 / S24) as f32
        }),
        B::S32(b) => push_range(b.iter_planes(), channels, range.clone(), |s| {
            (s as f64 / S32) as f32
        }),
        B::F32(b) => push_range(b.iter_planes(), channels, range.clone(), |s| s),
        B::F64(b) => push_range(b.iter_planes(), channels, range.clone(), |s| s as f32),
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `lowpass_filter_width` of torchaudio's resampler.
const LOWPASS_WIDTH: f64 = 6.0;

/// Most kernel values [`resample`] may build for an upload (4 Mi values, 16 MB). Every usual
/// sample rate needs far fewer (44.1 kHz: 160 phases of 455 taps); a rate whose ratio to 16 kHz
/// does not reduce, such as 44,101 Hz, would need about 700 million (2.8 GB).
pub const MAX_RESAMPLE_KERNEL: usize = 1 << 22;

/// The reduced rates, the kernel's half width and taps, and the cut-off of a resampling.
struct ResampleGeometry {
    of: usize,
    nf: usize,
    width: usize,
    taps: usize,
    base: f64,
}

impl ResampleGeometry {
    fn new(orig: u32, new: u32) -> Self {
        let g = gcd(orig as u64, new as u64).max(1);
        let (of, nf) = ((orig as u64 / g) as usize, (new as u64 / g) as usize);
        let base = of.min(nf) as f64 * 0.99;
        let width = (LOWPASS_WIDTH * of as f64 / base).ceil() as usize;
        Self {
            of,
            nf,
            width,
            taps: 2 * width + of,
            base,
        }
    }
}

/// Values in [`resample`]'s kernel for these rates (0 when no resampling is needed).
pub fn resample_kernel_len(orig: u32, new: u32) -> usize {
    if orig == new {
        return 0;
    }
    let g = ResampleGeometry::new(orig, new);
    g.nf.saturating_mul(g.taps)
}

/// torchaudio's `functional.resample(x, orig, new)` with its defaults (`sinc_interp_hann`,
/// `lowpass_filter_width` 6, `rolloff` 0.99). The kernel is built with the reference's formula
/// and rounding (float64, the output phase offsets divided in float32, then the kernel rounded
/// to float32); the convolution sums in f64.
///
/// The kernel holds `new / g` phases of `2 * width + orig / g` taps, `g` the rates' greatest
/// common divisor: see [`resample_kernel_len`], and check it first for untrusted rates.
pub fn resample(x: &[f32], orig: u32, new: u32) -> Vec<f32> {
    if orig == new || x.is_empty() {
        return x.to_vec();
    }
    let r = Resampler::new(orig, new);
    let len = x.len();
    (0..r.output_len(len))
        .map(|o| r.output_of(o, len, |i| x[i]))
        .collect()
}

/// [`resample`]'s kernel, and its outputs one at a time: a window of the output is computed
/// from the input samples around it only, bit for bit as the whole.
struct Resampler {
    geometry: ResampleGeometry,
    kernel: Vec<f32>,
}

impl Resampler {
    fn new(orig: u32, new: u32) -> Self {
        let geometry = ResampleGeometry::new(orig, new);
        let ResampleGeometry {
            of,
            nf,
            width,
            taps,
            base,
        } = geometry;
        let lowpass = LOWPASS_WIDTH;
        let mut kernel = vec![0f32; nf * taps];
        for p in 0..nf {
            // torch.arange(0, -new, -1) / new: an int64 tensor divided in float32.
            let phase = (-(p as f32) / nf as f32) as f64;
            for (j, k) in kernel[p * taps..(p + 1) * taps].iter_mut().enumerate() {
                let idx = (j as f64 - width as f64) / of as f64;
                let t = ((phase + idx) * base).clamp(-lowpass, lowpass);
                let window = (t * std::f64::consts::PI / lowpass / 2.0).cos().powi(2);
                let t = t * std::f64::consts::PI;
                let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
                *k = (sinc * (window * (base / of as f64))) as f32;
            }
        }
        Self { geometry, kernel }
    }

    /// Output samples for `len` input samples.
    fn output_len(&self, len: usize) -> usize {
        let g = &self.geometry;
        (g.nf as u128 * len as u128).div_ceil(g.of as u128) as usize
    }

    /// The input samples output `o` reads, `start..end` (may reach past either end of the input,
    /// where the input is zero).
    fn input_span(&self, o: usize) -> (isize, isize) {
        let g = &self.geometry;
        let start = ((o / g.nf) * g.of) as isize - g.width as isize;
        (start, start + g.taps as isize)
    }

    /// Output sample `o` of an input of `len` samples, read through `x` (called for indexes in
    /// `0..len` only, as the input is padded with zeros on both sides).
    fn output_of(&self, o: usize, len: usize, x: impl Fn(usize) -> f32) -> f32 {
        let g = &self.geometry;
        let (start, _) = self.input_span(o);
        let k = &self.kernel[(o % g.nf) * g.taps..(o % g.nf + 1) * g.taps];
        k.iter()
            .enumerate()
            .map(|(j, &w)| {
                let i = start + j as isize;
                let v = if i < 0 || i as usize >= len {
                    0.0
                } else {
                    x(i as usize) as f64
                };
                w as f64 * v
            })
            .sum::<f64>() as f32
    }
}

/// Start samples of the `clips` clips of `clip_secs` seconds that pytorchvideo's
/// `ConstantClipsPerVideoSampler` picks in `len` samples at `rate`, each `int(start * rate)`:
/// clip k starts at k * max(D - clip_secs, 0) / clips seconds, D = len / rate (a float), in exact
/// rational arithmetic as the reference's `Fraction`s.
pub fn clip_starts(len: usize, rate: u32, clip_secs: u32, clips: usize) -> Vec<usize> {
    let duration = len as f64 / rate as f64;
    let max_start = (duration - clip_secs as f64).max(0.0);
    // max_start = mant * 2^exp exactly.
    let bits = max_start.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mant, exp) = if raw_exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), raw_exp - 1075)
    };
    (0..clips)
        .map(|k| {
            // floor(mant * 2^exp * k * rate / clips)
            // (floor(a / b) >> e equals floor(a / (b * 2^e)) for non-negative integers.)
            let num = mant as u128 * k as u128 * rate as u128;
            if exp >= 0 {
                ((num << exp) / clips as u128) as usize
            } else if -exp >= 128 {
                0
            } else {
                ((num / clips as u128) >> (-exp) as u32) as usize
            }
        })
        .collect()
}

/// The Kaldi filterbank of `torchaudio.compliance.kaldi.fbank` for one sample rate, with
/// ImageBind's options.
pub struct Fbank {
    window_size: usize,
    window_shift: usize,
    padded: usize,
    window: Vec<f32>,
    /// Per mel bin: first FFT bin and the triangle's weights from there.
    banks: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank")
            .field("window_size", &self.window_size)
            .field("window_shift", &self.window_shift)
            .field("bins", &self.banks.len())
            .finish()
    }
}

fn mel(f: f64) -> f64 {
    1127.0 * (1.0 + f / 700.0).ln()
}

impl Fbank {
    /// 25 ms Hann windows every 10 ms, FFT size the next power of two, `num_mel_bins`
    /// triangles from 20 Hz to Nyquist on Kaldi's mel scale.
    pub fn new(sample_rate: u32, num_mel_bins: usize) -> Result<Self, EmbedError> {
        let sr = sample_rate as f64;
        // int(sample_frequency * ms * 0.001), as the reference.
        let window_size = (sr * 25.0 * 0.001) as usize;
        let window_shift = (sr * 10.0 * 0.001) as usize;
        if window_size < 2 || window_shift == 0 || num_mel_bins < 4 {
            return Err(EmbedError::InvalidInput(format!(
                "sample rate {sample_rate} Hz is too low for a 25 ms filterbank"
            )));
        }
        let padded = window_size.next_power_of_two();
        let window: Vec<f32> = (0..window_size)
            .map(|n| {
                (0.5 - 0.5
                    * (2.0 * std::f64::consts::PI * n as f64 / (window_size - 1) as f64).cos())
                    as f32
            })
            .collect();
        let nyquist = 0.5 * sr;
        let (low, high) = (20.0, nyquist);
        if low >= high {
            return Err(EmbedError::InvalidInput(format!(
                "sample rate {sample_rate} Hz is too low for a 20 Hz low cut"
            )));
        }
        let fft_bin_width = sr / padded as f64;
        let (mel_low, mel_high) = (mel(low), mel(high));
        let delta = (mel_high - mel_low) / (num_mel_bins + 1) as f64;
        let num_fft_bins = padded / 2;
        let banks = (0..num_mel_bins)
            .map(|b| {
                let left = mel_low + b as f64 * delta;
                let center = mel_low + (b as f64 + 1.0) * delta;
                let right = mel_low + (b as f64 + 2.0) * delta;
                let w: Vec<f64> = (0..num_fft_bins)
                    .map(|i| {
                        let m = mel(fft_bin_width * i as f64);
                        let up = (m - left) / (center - left);
                        let down = (right - m) / (right - center);
                        up.min(down).max(0.0)
                    })
                    .collect();
                let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
                let last = w.iter().rposition(|&v| v > 0.0).map_or(first, |l| l + 1);
                (first, w[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(padded);
        Ok(Self {
            window_size,
            window_shift,
            padded,
            window,
            banks,
            fft,
        })
    }

    pub fn num_mel_bins(&self) -> usize {
        self.banks.len()
    }

    /// Number of frames of `len` samples (edges snipped): 0 under one window.
    pub fn num_frames(&self, len: usize) -> usize {
        if len < self.window_size {
            0
        } else {
            1 + (len - self.window_size) / self.window_shift
        }
    }

    /// Log-mel energies `[frames][bins]` of a mono waveform.
    pub fn compute(&self, x: &[f32]) -> Vec<Vec<f32>> {
        let eps = f32::EPSILON as f64;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f64; self.padded / 2 + 1];
        (0..self.num_frames(x.len()))
            .map(|f| {
                let frame = &x[f * self.window_shift..f * self.window_shift + self.window_size];
                // DC removal, pre-emphasis and window in float32 like the reference, so the FFT
                // sees the reference's input; the FFT and the mel sums run in f64.
                let mean =
                    (frame.iter().map(|&v| v as f64).sum::<f64>() / frame.len() as f64) as f32;
                let mut prev = frame[0] - mean;
                for (j, (&v, w)) in frame.iter().zip(&self.window).enumerate() {
                    let cur = v - mean;
                    // Pre-emphasis with the first sample as its own predecessor.
                    let pre = if j == 0 {
                        cur - 0.97 * cur
                    } else {
                        cur - 0.97 * prev
                    };
                    input[j] = (pre * w) as f64;
                    prev = cur;
                }
                input[self.window_size..].iter_mut().for_each(|v| *v = 0.0);
                self.fft
                    .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                    .expect("buffers sized by the plan");
                for (p, c) in power.iter_mut().zip(&spectrum) {
                    *p = c.norm_sqr();
                }
                self.banks
                    .iter()
                    .map(|(first, w)| {
                        let e: f64 = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
                        e.max(eps).ln() as f32
                    })
                    .collect()
            })
            .collect()
    }
}

/// Audio settings of the ImageBind tower.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioPreprocessConfig {
    pub num_mel_bins: usize,
    pub target_len: usize,
    pub clip_secs: u32,
    pub clips: usize,
}

impl Default for AudioPreprocessConfig {
    fn default() -> Self {
        Self {
            num_mel_bins: 128,
            target_len: 204,
            clip_secs: 2,
            clips: 3,
        }
    }
}

/// Per clip a `[mels * target_len]` filterbank, and the clips' sample ranges at 16 kHz.
pub type ClipFbanks = (Vec<Vec<f32>>, Vec<(usize, usize)>);

/// Clips of a decoded waveform as the official pipeline builds them: resampled to 16 kHz, cut
/// into clips, each mean-removed in place, filterbank of the first channel `[mels][target_len]`
/// (transposed, zero-padded or cut), not yet normalised. Also returns the clips' sample ranges.
pub fn clip_fbanks(
    wave: &Waveform,
    fbank: &Fbank,
    cfg: &AudioPreprocessConfig,
) -> Result<ClipFbanks, EmbedError> {
    if wave.is_empty() {
        return Err(EmbedError::InvalidInput("audio has no samples".into()));
    }
    let kernel = resample_kernel_len(wave.sample_rate, SAMPLE_RATE);
    if kernel > MAX_RESAMPLE_KERNEL {
        return Err(EmbedError::InvalidInput(format!(
            "sample rate {} Hz is not supported: resampling it to {SAMPLE_RATE} Hz would need a \
             {kernel}-value filter (at most {MAX_RESAMPLE_KERNEL}); use a usual rate such as \
             44.1 or 48 kHz",
            wave.sample_rate
        )));
    }
    let chans: Vec<Vec<f32>> = wave
        .channels
        .iter()
        .map(|c| resample(c, wave.sample_rate, SAMPLE_RATE))
        .collect();
    let len = chans[0].len();
    fbanks_of_segments(len, vec![Segment { start: 0, chans }], fbank, cfg)
}

/// Resampled samples of every channel from 16 kHz index `start` on: the whole waveform, or
/// one window of it holding whole clips.
pub struct Segment {
    start: usize,
    chans: Vec<Vec<f32>>,
}

/// [`clip_fbanks`] of a 16 kHz waveform of `len` samples per channel of which `segments` hold
/// at least every clip's samples (the whole of it, or the clips' windows only).
fn fbanks_of_segments(
    len: usize,
    mut segments: Vec<Segment>,
    fbank: &Fbank,
    cfg: &AudioPreprocessConfig,
) -> Result<ClipFbanks, EmbedError> {
    let mut out = Vec::with_capacity(cfg.clips);
    let mut ranges = Vec::with_capacity(cfg.clips);
    for (start, end) in clip_ranges(len, cfg) {
        let seg = segments
            .iter_mut()
            .find(|s| s.start <= start && end <= s.start + s.chans[0].len())
            .ok_or_else(|| EmbedError::Decode(format!("audio clip {start}..{end} was not kept")))?;
        let chans = &mut seg.chans;
        let (a, b) = (start - seg.start, end - seg.start);
        let n = (end - start) * chans.len();
        let sum: f64 = chans.iter().flat_map(|c| &c[a..b]).map(|&v| v as f64).sum();
        let mean = (sum / n.max(1) as f64) as f32;
        for c in chans.iter_mut() {
            c[a..b].iter_mut().for_each(|v| *v -= mean);
        }
        let frames = fbank.compute(&chans[0][a..b]);
        if frames.is_empty() {
            return Err(EmbedError::InvalidInput(format!(
                "audio clip of {} samples is shorter than one 25 ms window",
                end - start
            )));
        }
        let bins = fbank.num_mel_bins();
        let mut m = vec![0f32; bins * cfg.target_len];
        for (t, row) in frames.iter().take(cfg.target_len).enumerate() {
            for (b, &v) in row.iter().enumerate() {
                m[b * cfg.target_len + t] = v;
            }
        }
        out.push(m);
        ranges.push((start, end));
    }
    Ok((out, ranges))
}

/// The 16 kHz sample ranges of the clips of a waveform of `len` samples per channel.
fn clip_ranges(len: usize, cfg: &AudioPreprocessConfig) -> Vec<(usize, usize)> {
    let clip_len = cfg.clip_secs as usize * SAMPLE_RATE as usize;
    clip_starts(len, SAMPLE_RATE, cfg.clip_secs, cfg.clips)
        .into_iter()
        .map(|start| {
            let end = (start + clip_len).min(len);
            (start.min(end), end)
        })
        .collect()
}

/// Which samples the clips of a stream read: the rest is decoded, checked and dropped.
struct ClipPlan {
    /// Samples per channel of the stream, and of its 16 kHz version.
    frames: usize,
    len: usize,
    /// The clips' 16 kHz ranges, overlapping ones merged, in order.
    outputs: Vec<std::ops::Range<usize>>,
    /// The input samples those read (the resampling filter's reach included), merged, in order.
    inputs: Vec<std::ops::Range<usize>>,
    resampler: Option<Resampler>,
}

/// Merges overlapping or touching ranges of a sorted list.
fn merge_ranges(
    ranges: impl IntoIterator<Item = std::ops::Range<usize>>,
) -> Vec<std::ops::Range<usize>> {
    let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

impl ClipPlan {
    /// The plan for `frames` samples per channel at `rate` Hz, or `None` when the rate cannot
    /// be resampled (left to [`clip_fbanks`] to refuse).
    fn new(frames: usize, rate: u32, cfg: &AudioPreprocessConfig) -> Option<Self> {
        if frames == 0 || rate == 0 || resample_kernel_len(rate, SAMPLE_RATE) > MAX_RESAMPLE_KERNEL
        {
            return None;
        }
        let resampler = (rate != SAMPLE_RATE).then(|| Resampler::new(rate, SAMPLE_RATE));
        let len = resampler.as_ref().map_or(frames, |r| r.output_len(frames));
        let mut clips = clip_ranges(len, cfg);
        clips.sort_unstable();
        let outputs = merge_ranges(clips.into_iter().map(|(a, b)| a..b));
        let inputs = merge_ranges(outputs.iter().filter(|o| !o.is_empty()).map(|o| {
            let (lo, hi) = match &resampler {
                None => (o.start as isize, o.end as isize),
                Some(r) => (r.input_span(o.start).0, r.input_span(o.end - 1).1),
            };
            (lo.max(0) as usize).min(frames)..(hi.max(0) as usize).min(frames)
        }));
        Some(Self {
            frames,
            len,
            outputs,
            inputs,
            resampler,
        })
    }

    /// Samples held per channel: the kept input and the resampled windows.
    fn samples(&self) -> u64 {
        let kept: usize = self.inputs.iter().map(|r| r.len()).sum();
        let resampled: usize = self.outputs.iter().map(|r| r.len()).sum();
        (kept + resampled) as u64
    }

    /// The clips' windows resampled from the kept input (`kept[i]`: every channel's samples of
    /// `inputs[i]`).
    fn resample(&self, kept: &[Vec<Vec<f32>>]) -> Vec<Segment> {
        self.outputs
            .iter()
            .map(|o| {
                let chans = match &self.resampler {
                    None => {
                        let i = self
                            .inputs
                            .iter()
                            .position(|r| r.start <= o.start && o.end <= r.end);
                        let (r, k) = match i {
                            Some(i) => (&self.inputs[i], &kept[i]),
                            // An empty window.
                            None => {
                                return Segment {
                                    start: o.start,
                                    chans: vec![Vec::new(); kept.first().map_or(1, Vec::len)],
                                }
                            }
                        };
                        k.iter()
                            .map(|c| c[o.start - r.start..o.end - r.start].to_vec())
                            .collect()
                    }
                    Some(rs) => {
                        let span = (rs.input_span(o.start).0.max(0) as usize).min(self.frames);
                        let i = self
                            .inputs
                            .iter()
                            .position(|r| r.start <= span && span <= r.end);
                        match i {
                            Some(i) if !o.is_empty() => {
                                let r = &self.inputs[i];
                                kept[i]
                                    .iter()
                                    .map(|c| {
                                        o.clone()
                                            .map(|t| {
                                                rs.output_of(t, self.frames, |x| c[x - r.start])
                                            })
                                            .collect()
                                    })
                                    .collect()
                            }
                            _ => vec![Vec::new(); kept.first().map_or(1, Vec::len)],
                        }
                    }
                };
                Segment {
                    start: o.start,
                    chans,
                }
            })
            .collect()
    }
}

/// (x - mean) / std in f32, as torchvision's `Normalize` on the filterbank.
pub fn normalize_fbank(m: &mut [f32]) {
    m.iter_mut()
        .for_each(|v| *v = (*v - FBANK_MEAN) / FBANK_STD);
}

/// Audio file bytes (see [`decode_audio`]) to the audio tower's input: `clips` normalised `[1, mels, target_len]` filterbanks,
/// concatenated.
pub fn preprocess(
    bytes: &[u8],
    fbank: &Fbank,
    cfg: &AudioPreprocessConfig,
) -> Result<Vec<f32>, EmbedError> {
    preprocess_within(bytes, fbank, cfg, &UploadBudget::default())
}

/// [`preprocess`] within a decode budget. A stream whose header states its exact length, rate
/// and channels is decoded keeping only the samples its clips read
/// ([`decode_clip_windows_within`]: a few seconds, however long the file); others are decoded
/// whole within the budget ([`decode_audio_within`]). Both give the same filterbanks, bit for
/// bit. The reservation is held until the filterbanks are computed.
pub fn preprocess_within(
    bytes: &[u8],
    fbank: &Fbank,
    cfg: &AudioPreprocessConfig,
    budget: &UploadBudget,
) -> Result<Vec<f32>, EmbedError> {
    let (clips, _) = match decode_clip_windows_within(bytes, cfg, budget)? {
        Some((len, segments, _held)) => fbanks_of_segments(len, segments, fbank, cfg)?,
        None => {
            let (wave, _held) = decode_audio_within(bytes, budget)?;
            clip_fbanks(&wave, fbank, cfg)?
        }
    };
    let mut out = clips.concat();
    normalize_fbank(&mut out);
    Ok(out)
}

/// The 16 kHz length of `bytes`' audio and the windows of it that the clips of `cfg` read
/// (every channel, resampled), decoding the stream once and keeping only the input samples
/// those windows need: memory of a few seconds of audio, not of the whole file. Every sample is
/// still decoded and checked as [`decode_audio`] does. `None` when the header does not state
/// an exact length, rate and channel count, or when the stream turns out to differ from its
/// header (longer, other channels or rate): the caller then decodes it whole.
pub fn decode_clip_windows_within<'b>(
    bytes: &[u8],
    cfg: &AudioPreprocessConfig,
    budget: &'b UploadBudget,
) -> Result<Option<(usize, Vec<Segment>, Reservation<'b>)>, EmbedError> {
    contain(|| decode_clip_windows_unguarded(bytes, cfg, budget))
        .unwrap_or_else(|panic| Err(decoder_panicked(sniff(bytes), &panic)))
}

fn decode_clip_windows_unguarded<'b>(
    bytes: &[u8],
    cfg: &AudioPreprocessConfig,
    budget: &'b UploadBudget,
) -> Result<Option<(usize, Vec<Segment>, Reservation<'b>)>, EmbedError> {
    let OpenedAudio {
        mut reader,
        mut decoder,
        track_id,
        expected,
        exact_length,
        rate,
        channels,
        what,
    } = open_audio(bytes)?;
    let (Some(n), Some(c), Some(rate), true) = (expected, channels, rate, exact_length) else {
        return Ok(None);
    };
    let (n, c) = (n as usize, c as usize);
    let Some(plan) = (c > 0).then(|| ClipPlan::new(n, rate, cfg)).flatten() else {
        return Ok(None);
    };
    let kernel = 4 * resample_kernel_len(rate, SAMPLE_RATE) as u64;
    let cost = (bytes.len() as u64)
        .saturating_add(4 * c as u64 * plan.samples())
        .saturating_add(kernel)
        .saturating_add(AUDIO_OVERHEAD);
    let held = budget.reserve(
        cost,
        format_args!("{what} of {n} samples per channel, {c} channels at {rate} Hz"),
    )?;
    let mut kept: Vec<Vec<Vec<f32>>> = plan
        .inputs
        .iter()
        .map(|r| (0..c).map(|_| Vec::with_capacity(r.len())).collect())
        .collect();
    // The first non-finite sample, as (channel, sample), the lowest channel first.
    let mut bad: Option<(usize, usize)> = None;
    let mut pos = 0usize;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(sym_error(what, e)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(|e| sym_error(what, e))?;
        let frames = buf.frames();
        if frames == 0 {
            continue;
        }
        if buf.num_planes() != c || buf.spec().rate() != rate || pos + frames > n {
            // Not the stream its header describes: decoded whole instead.
            return Ok(None);
        }
        for (r, k) in plan.inputs.iter().zip(kept.iter_mut()) {
            let (lo, hi) = (r.start.max(pos), r.end.min(pos + frames));
            if lo < hi {
                append_plane_range(&buf, k, lo - pos..hi - pos);
            }
        }
        if let Some((ch, i)) = first_non_finite(&buf) {
            let found = (ch, pos + i);
            bad = Some(bad.map_or(found, |b| b.min(found)));
        }
        pos += frames;
    }
    if pos == 0 {
        return Err(EmbedError::InvalidInput(format!(
            "{what} contains no audio samples"
        )));
    }
    if pos < n {
        return Err(EmbedError::Decode(format!(
            "{what}: file is truncated ({pos} of {n} samples per channel decoded)"
        )));
    }
    if let Some((_, i)) = bad {
        return Err(EmbedError::InvalidInput(format!(
            "{what} contains NaN or infinite samples (first at sample {i})"
        )));
    }
    Ok(Some((plan.len, plan.resample(&kept), held)))
}

/// The first NaN or infinite sample of a decoded buffer, as (plane, frame): the lowest plane
/// first. Integer samples are always finite.
fn first_non_finite(
    buf: &symphonia::core::audio::GenericAudioBufferRef<'_>,
) -> Option<(usize, usize)> {
    use symphonia::core::audio::{Audio, GenericAudioBufferRef as B};
    match buf {
        B::F32(b) => b
            .iter_planes()
            .enumerate()
            .find_map(|(c, p)| p.iter().position(|v| !v.is_finite()).map(|i| (c, i))),
        // Checked as the f32 it becomes, as [`decode_audio`] does.
        B::F64(b) => b.iter_planes().enumerate().find_map(|(c, p)| {
            p.iter()
                .position(|&v| !(v as f32).is_finite())
                .map(|i| (c, i))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_starts_follow_the_reference_fractions() {
        // Values from the official get_clip_timepoints on the fixture files.
        assert_eq!(clip_starts(14400, 16000, 2, 3), vec![0, 0, 0]);
        assert_eq!(clip_starts(41600, 16000, 2, 3), vec![0, 3200, 6400]);
        assert_eq!(clip_starts(64000, 16000, 2, 3), vec![0, 10666, 21333]);
        assert_eq!(clip_starts(36800, 16000, 2, 3), vec![0, 1599, 3199]);
        assert_eq!(clip_starts(131200, 16000, 2, 3), vec![0, 33066, 66133]);
    }

    #[test]
    fn resample_keeps_length_rule_and_a_low_tone() {
        let x: Vec<f32> = (0..4410)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 44100.0).sin())
            .collect();
        let y = resample(&x, 44100, 16000);
        assert_eq!(y.len(), 1600);
        // Away from the edges the tone is preserved.
        for (i, v) in y.iter().enumerate().skip(100).take(1400) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin();
            assert!((v - want).abs() < 2e-3, "{i}: {v} vs {want}");
        }
        assert_eq!(resample(&x, 16000, 16000), x);
    }

    #[test]
    fn rejects_unknown_broken_and_short_audio() {
        assert!(matches!(
            decode_audio(b"not audio at all, just some text"),
            Err(EmbedError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            decode_audio(b""),
            Err(EmbedError::InvalidInput(_))
        ));
        assert!(decode_audio(b"fLaC\0\0\0\0\0\0\0\0").is_err());
        assert!(decode_audio(b"RIFF\0\0\0\0WAVEjunk").is_err());
        let fb = Fbank::new(16000, 128).unwrap();
        let w = Waveform {
            sample_rate: 16000,
            channels: vec![vec![0.1; 300]],
        };
        assert!(clip_fbanks(&w, &fb, &AudioPreprocessConfig::default()).is_err());
    }

    /// Bytes starting `FF FE 00` (a UTF-16 byte order mark) were called MP3 in the refusal.
    #[test]
    fn only_a_layer_iii_frame_header_is_called_mp3() {
        assert!(is_mp3_frame_header(&[0xff, 0xfb, 0x90, 0x64])); // MPEG-1 layer III, 128 kb/s
        assert!(is_mp3_frame_header(&[0xff, 0xf3, 0x48, 0xc4])); // MPEG-2 layer III
        for b in [
            &[0xff, 0xfe, 0x00, 0x00][..], // UTF-16 LE BOM: layer I, free bit rate
            &[0xff, 0xfd, 0x90, 0x64],     // layer II
            &[0xff, 0xfb, 0xf0, 0x64],     // bad bit rate
            &[0xff, 0xfb, 0x9c, 0x64],     // reserved sample rate
            &[0xff, 0xeb, 0x90, 0x64],     // reserved MPEG version
            &[0xff, 0xfb],
        ] {
            assert!(!is_mp3_frame_header(b), "{b:02x?}");
        }
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend("a dog".encode_utf16().flat_map(u16::to_le_bytes));
        utf16.extend([0u8; 64]);
        let e = decode_audio(&utf16).unwrap_err().to_string();
        assert!(
            e.contains("audio of an unrecognised format") && !e.contains("MP3:"),
            "{e}"
        );
    }

    /// A FLAC stream of `channels` channels of 16-bit silence at 44.1 kHz whose STREAMINFO
    /// claims `claimed` samples per channel, followed by `blocks` frames of 4096 samples
    /// (CONSTANT subframes: three bytes per channel). Twenty minutes of eight channels take
    /// about 440 KB, as in the review.
    fn flac_silence(channels: u8, claimed: u64, blocks: u32) -> Vec<u8> {
        fn crc8(data: &[u8]) -> u8 {
            data.iter().fold(0u8, |mut c, &b| {
                c ^= b;
                for _ in 0..8 {
                    c = if c & 0x80 != 0 {
                        (c << 1) ^ 0x07
                    } else {
                        c << 1
                    };
                }
                c
            })
        }
        fn crc16(data: &[u8]) -> u16 {
            data.iter().fold(0u16, |mut c, &b| {
                c ^= (b as u16) << 8;
                for _ in 0..8 {
                    c = if c & 0x8000 != 0 {
                        (c << 1) ^ 0x8005
                    } else {
                        c << 1
                    };
                }
                c
            })
        }
        let mut f = b"fLaC".to_vec();
        f.extend_from_slice(&[0x80, 0, 0, 34]); // last block, STREAMINFO, 34 bytes
        f.extend_from_slice(&4096u16.to_be_bytes());
        f.extend_from_slice(&4096u16.to_be_bytes());
        f.extend_from_slice(&[0; 6]); // frame sizes unknown
                                      // 20 bits rate, 3 bits channels - 1, 5 bits bits per sample - 1, 36 bits frames.
        let packed: u64 = (44_100u64 << 44)
            | (((channels - 1) as u64) << 41)
            | (15u64 << 36)
            | (claimed & ((1 << 36) - 1));
        f.extend_from_slice(&packed.to_be_bytes());
        f.extend_from_slice(&[0; 16]); // MD5 unknown
        for n in 0..blocks {
            // Block size 4096, 44.1 kHz, `channels` independent channels, 16 bits; the frame
            // number in UTF-8 coding (all numbers here fit three bytes).
            let mut frame = vec![0xff, 0xf8, 0xc9, ((channels - 1) << 4) | 0x08];
            if n < 0x80 {
                frame.push(n as u8);
            } else if n < 0x800 {
                frame.extend_from_slice(&[0xc0 | (n >> 6) as u8, 0x80 | (n & 0x3f) as u8]);
            } else {
                let (hi, mid, lo) = ((n >> 12) as u8, (n >> 6 & 0x3f) as u8, (n & 0x3f) as u8);
                frame.extend_from_slice(&[0xe0 | hi, 0x80 | mid, 0x80 | lo]);
            }
            frame.push(crc8(&frame));
            frame.extend(std::iter::repeat_n(0u8, 3 * channels as usize));
            let crc = crc16(&frame);
            f.extend_from_slice(&frame);
            f.extend_from_slice(&crc.to_be_bytes());
        }
        f
    }

    /// Weakness found in review: a 431 KB FLAC of 8 channels and 20 minutes grew the server by
    /// 2.4 GB. What the samples (and their 16 kHz copies) need is computed from the header and
    /// refused before the first packet is decoded.
    #[test]
    fn audio_decoding_past_the_budget_is_refused_from_the_header() {
        let budget = UploadBudget::default();
        // The generated stream is valid FLAC: when it claims what it holds, it decodes.
        let (wave, _) = decode_audio_within(&flac_silence(8, 2 * 4096, 2), &budget).unwrap();
        assert_eq!((wave.channels.len(), wave.len()), (8, 2 * 4096));
        let frames = 20 * 60 * 44_100;
        let e = decode_audio_within(&flac_silence(8, frames, 2), &budget).unwrap_err();
        assert!(
            matches!(&e, EmbedError::InvalidInput(m)
                if m.contains("8 channels") && m.contains("over the limit of 512 MiB")),
            "{e}"
        );
        // A 16-bit mono WAV claiming 150 million samples (under the length limit, but 800 MB
        // with its 16 kHz copy): refused from the header as well.
        let mut w = pcm_wav(48_000, 16);
        w[4..8].copy_from_slice(&(36 + 300_000_000u32).to_le_bytes());
        w[40..44].copy_from_slice(&300_000_000u32.to_le_bytes());
        let e = decode_audio_within(&w, &budget).unwrap_err();
        assert!(
            matches!(&e, EmbedError::InvalidInput(m) if m.contains("over the limit")),
            "{e}"
        );
        assert!(decode_cost(0, frames, 8, 44_100) > 2 << 30);
        // A short clip fits, and its reservation is given back.
        let (wave, held) = decode_audio_within(&pcm_wav(22_050, 1600), &budget).unwrap();
        assert_eq!(wave.len(), 1600);
        assert!(held.bytes() < 2 << 20, "{}", held.bytes());
    }

    /// A 16-bit PCM WAV of `channels` channels (each its own tone and level) of `n` samples
    /// at `rate` Hz.
    fn multichannel_wav(rate: u32, channels: u16, n: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..n)
            .flat_map(|i| {
                (0..channels).flat_map(move |c| {
                    let x = (i as f32 * 0.013 * (c + 1) as f32).sin() * (2000.0 + 900.0 * c as f32);
                    ((x + 300.0 * c as f32) as i16).to_le_bytes()
                })
            })
            .collect();
        let block = 2 * channels;
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * block as u32).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    /// Decoding only the clips' windows gives the filterbanks of the whole waveform bit for
    /// bit: resampled or not, clips apart or overlapping (each clip's mean removed from every
    /// channel, the next clip seeing it), several channels.
    #[test]
    fn clip_windows_give_the_whole_waveforms_filterbanks_bit_for_bit() {
        let fb = Fbank::new(SAMPLE_RATE, 128).unwrap();
        let cfg = AudioPreprocessConfig::default();
        let budget = UploadBudget::default();
        for (rate, channels, secs) in [
            (44_100, 3, 9.5),
            (16_000, 2, 10.0),
            (22_050, 2, 3.1),
            (48_000, 1, 0.7),
        ] {
            let n = (rate as f64 * secs) as usize;
            let wav = multichannel_wav(rate, channels, n);
            let (len, segments, held) = decode_clip_windows_within(&wav, &cfg, &budget)
                .unwrap()
                .expect("a WAV states its length");
            let windows = fbanks_of_segments(len, segments, &fb, &cfg).unwrap();
            drop(held);
            let whole = clip_fbanks(&decode_audio(&wav).unwrap(), &fb, &cfg).unwrap();
            assert_eq!(windows.1, whole.1, "{rate} Hz x {channels}");
            assert!(
                windows.0.iter().flatten().map(|v| v.to_bits()).eq(whole
                    .0
                    .iter()
                    .flatten()
                    .map(|v| v.to_bits())),
                "{rate} Hz x {channels}: filterbanks differ"
            );
        }
        assert_eq!(budget.limits().per_decode, 512 << 20);
    }

    /// Weakness found in review: a 431 KB FLAC of 8 channels and 20 minutes decoded to 2.4 GB.
    /// Its clips read six seconds: decoded keeping only those, it is embedded within a budget
    /// of 16 MiB per file (decoded whole, it needs more than a gigabyte).
    #[test]
    fn a_long_multichannel_file_is_embedded_keeping_only_its_clips() {
        let fb = Fbank::new(SAMPLE_RATE, 128).unwrap();
        let cfg = AudioPreprocessConfig::default();
        let frames = 20 * 60 * 44_100 / 4096;
        let flac = flac_silence(8, frames as u64 * 4096, frames);
        assert!(flac.len() < 500_000, "{}", flac.len());
        let mib = 1 << 20;
        let budget = crate::embed::DecodeBudget::new(crate::embed::DecodeLimits {
            per_decode: 16 * mib,
            per_upload: 16 * mib,
            process: 16 * mib,
            wait: std::time::Duration::from_millis(10),
        })
        .upload();
        let out = preprocess_within(&flac, &fb, &cfg, &budget).unwrap();
        assert_eq!(out.len(), cfg.clips * 128 * cfg.target_len);
        // The same file decoded whole does not fit.
        assert!(matches!(
            decode_audio_within(&flac, &budget),
            Err(EmbedError::InvalidInput(_))
        ));
        // A stream that is not what its header says (shorter) is still refused as truncated.
        let short = flac_silence(8, 3 * 4096, 2);
        let e = preprocess_within(&short, &fb, &cfg, &budget).unwrap_err();
        assert!(
            matches!(&e, EmbedError::Decode(m) if m.contains("truncated")),
            "{e}"
        );
    }

    /// A 16-bit mono PCM WAV of `n` samples at `rate` Hz.
    fn pcm_wav(rate: u32, n: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..n)
            .flat_map(|i| (((i as f32 * 0.05).sin() * 8000.0) as i16).to_le_bytes())
            .collect();
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate.wrapping_mul(2)).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    /// Found by the `audio` fuzz target: a WAV claiming 4,294,952,576 Hz made the resampler
    /// allocate gigabytes for its kernel. Rates whose kernel is too large are refused; every
    /// usual rate still works.
    #[test]
    fn sample_rates_needing_a_huge_resampling_kernel_are_refused() {
        for rate in [
            8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400,
            192000, 352800, 384000, 768000,
        ] {
            let len = resample_kernel_len(rate, SAMPLE_RATE);
            assert!(len <= MAX_RESAMPLE_KERNEL / 4, "{rate} Hz: {len}");
        }
        assert!(resample_kernel_len(44101, SAMPLE_RATE) > MAX_RESAMPLE_KERNEL);
        let fb = Fbank::new(SAMPLE_RATE, 16).unwrap();
        let cfg = AudioPreprocessConfig {
            num_mel_bins: 16,
            target_len: 24,
            ..AudioPreprocessConfig::default()
        };
        for rate in [44101, 4_294_952_576] {
            let err = preprocess(&pcm_wav(rate, 1600), &fb, &cfg).unwrap_err();
            assert!(
                matches!(&err, EmbedError::InvalidInput(m) if m.contains("not supported")),
                "{rate} Hz: {err}"
            );
        }
        assert!(preprocess(&pcm_wav(22050, 1600), &fb, &cfg).is_ok());
    }

    /// Found by the `audio` fuzz target: a WAV header claiming 64,513 channels overflowed a
    /// 16-bit multiplication inside the decoder. Channel counts are checked first.
    #[test]
    fn wav_channel_counts_are_checked_before_decoding() {
        let with_channels = |n: u16| {
            let mut w = pcm_wav(16000, 1600);
            w[22..24].copy_from_slice(&n.to_le_bytes());
            w
        };
        for n in [0, 65, 64_513] {
            let err = decode_audio(&with_channels(n)).unwrap_err();
            assert!(matches!(err, EmbedError::InvalidInput(_)), "{n}: {err}");
        }
        assert!(decode_audio(&with_channels(1)).is_ok());
        // The fmt chunk after another chunk is found too.
        let mut w = pcm_wav(16000, 1600);
        let mut list = b"LIST".to_vec();
        list.extend_from_slice(&3u32.to_le_bytes());
        list.extend_from_slice(b"abc\0");
        w.splice(12..12, list);
        w[34..36].copy_from_slice(&300u16.to_le_bytes());
        assert!(decode_audio(&w).is_err());
        // A second fmt chunk, which the decoder reads after the first (found by a 10-minute run
        // of the fuzz target).
        let mut w = pcm_wav(16000, 1600);
        let mut second = w[12..36].to_vec();
        second[10..12].copy_from_slice(&65_534u16.to_le_bytes());
        w.splice(36..36, second);
        let err = decode_audio(&w).unwrap_err();
        assert!(matches!(err, EmbedError::InvalidInput(_)), "{err}");
        // A header after leading junk, which the decoder's probe finds (the fuzzer's "Og" + WAV).
        let mut w = b"Og".to_vec();
        w.extend(with_channels(65_535));
        let err = decode_audio(&w).unwrap_err();
        assert!(matches!(err, EmbedError::InvalidInput(_)), "{err}");
    }
}
