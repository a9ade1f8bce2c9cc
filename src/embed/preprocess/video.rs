//! Video input for ImageBind: a ZIP archive of image frames, turned into the official
//! `load_and_transform_video_data` tensor `[15, 3, 2, 224, 224]` (5 clips x 3 spatial crops,
//! 2 frames each).
//!
//! The archive:
//! - frames are the entries named `*.png`, `*.jpg`, `*.jpeg`, `*.webp` or `*.gif` (any case),
//!   in any folder, ordered by their path in natural order (runs of ASCII digits compare as
//!   numbers: `frame2.png` before `frame10.png`), as pytorchvideo's `FrameVideo.from_directory`
//!   sorts them; equal keys (`f01`, `f1`) fall back to plain string order;
//! - directories, `__MACOSX/` trees, hidden files (`.DS_Store`, `._*`) and other entries are
//!   skipped;
//! - an optional entry named `fps.txt` holds the frame rate as a decimal number (`25`, `29.97`);
//!   without one the rate is 30 fps, `FrameVideo`'s default.
//!
//! Sampling and transforms are the official ones, with the video read as pytorchvideo's
//! `FrameVideo` reads frames (`get_clip(start, end)` takes frames `ceil(fps * start)` up to
//! `ceil(fps * min(end, duration))`, exclusive; duration = frames / fps):
//! 1. `ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=5)`: clip `k` spans
//!    `[k * max(D - 2, 0) / 5, + 2)` seconds, in the sampler's exact `Fraction`s; a video shorter
//!    than 2 s gives 5 identical clips of all its frames;
//! 2. `UniformTemporalSubsample(2)`: the first and the last frame of each clip;
//! 3. `/ 255`, then `ShortSideScale(224)`: torch's bilinear `interpolate` (align_corners=False,
//!    no antialiasing) in f32 to a short side of 224, long side `floor(long / short * 224)`;
//! 4. `NormalizeVideo` with the CLIP mean and standard deviation;
//! 5. `SpatialCrop(224, num_crops=3)`: the start, centre (offset rounded up) and end squares
//!    along the long side.
//!
//! Only the sampled frames (at most 10) are read and decoded, as `FrameVideo` loads only the
//! frames of each clip. They are decoded as OpenCV's `imdecode(IMREAD_COLOR)` (what `FrameVideo`
//! uses) does: EXIF orientation applied, alpha dropped (real video has none; not composited),
//! greyscale replicated, 16-bit samples cut to their high byte. PNG frames are bit-exact to it;
//! JPEG decoders may differ by a level of rounding. All sampled frames must share one size.
//!
//! The interpolation reproduces torch's CPU kernel operation for operation: f32 source indices
//! `scale * (d + 0.5) - 0.5`, weights `1 - l` and `l`, and each output
//! `fma(a, w0, b * w1)` along the width, then the same along the height (how torch's x86-64
//! build, compiled with FMA contraction, evaluates it).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use image::{DynamicImage, RgbImage};
use zip::ZipArchive;

use super::decoder_panicked;
use super::image::{decode_oriented, read_header, Alpha, CLIP_MEAN, CLIP_STD};
use crate::embed::EmbedError;
use crate::embed::{Reservation, UploadBudget};
use crate::guard::contain;

/// Clips per video (`clips_per_video`).
pub const CLIPS: usize = 5;
/// Clip length in seconds (`clip_duration`), also the frames kept per clip.
pub const CLIP_SECONDS: u32 = 2;
/// Frames kept per clip (`UniformTemporalSubsample(clip_duration)`).
pub const FRAMES_PER_CLIP: usize = 2;
/// Spatial crops per clip.
pub const CROPS: usize = 3;
/// Side of the crops of the official pipeline (and of models with 224-pixel images); a model
/// of another image size gets crops of its own size ([`preprocess_at`]).
pub const SIZE: usize = 224;
/// Values of one preprocessed video: `[CLIPS * CROPS, 3, FRAMES_PER_CLIP, SIZE, SIZE]`.
pub const INPUT_LEN: usize = input_len(SIZE);

/// Values of one video preprocessed to crops of `size` pixels.
pub const fn input_len(size: usize) -> usize {
    CLIPS * CROPS * 3 * FRAMES_PER_CLIP * size * size
}
/// Frame rate without an `fps.txt` (pytorchvideo's `FrameVideo` default).
pub const DEFAULT_FPS: f64 = 30.0;
/// Accepted frame rates. From 1 fps up every 2-second clip holds a frame.
pub const MIN_FPS: f64 = 1.0;
pub const MAX_FPS: f64 = 1000.0;
/// Most entries (files and folders) an archive may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest frame file, uncompressed.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;
/// Largest sum of the uncompressed sizes of all frames, as the archive declares them.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;
/// Name of the frame-rate entry.
pub const FPS_FILE: &str = "fps.txt";

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];

fn invalid(msg: impl Into<String>) -> EmbedError {
    EmbedError::InvalidInput(format!("video: {}", msg.into()))
}

fn decode_err(msg: impl Into<String>) -> EmbedError {
    EmbedError::Decode(format!("video: {}", msg.into()))
}

/// Compares two names as pytorchvideo's `natural_keys` does: digit runs by value, the text
/// between them as strings; ties (`01` and `1`) are broken by plain string order.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn tokens(s: &str) -> impl Iterator<Item = &str> {
        let mut rest = s;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let digit = rest.as_bytes()[0].is_ascii_digit();
            let end = rest
                .bytes()
                .position(|c| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (t, r) = rest.split_at(end);
            rest = r;
            Some(t)
        })
    }
    fn cmp_token(x: &str, y: &str) -> Ordering {
        let xd = x.as_bytes()[0].is_ascii_digit();
        let yd = y.as_bytes()[0].is_ascii_digit();
        match (xd, yd) {
            (true, true) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            // Python's keys always alternate text and number, starting with (maybe empty) text;
            // an empty text sorts before anything, which puts a leading number first.
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.cmp(y),
        }
    }
    let mut ta = tokens(a);
    let mut tb = tokens(b);
    loop {
        match (ta.next(), tb.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match cmp_token(x, y) {
                Ordering::Equal => {}
                o => return o,
            },
        }
    }
}

/// Whether an archive entry is a frame, by its path.
fn is_frame_name(name: &str) -> bool {
    if name.split('/').any(|c| c == "__MACOSX") {
        return false;
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.starts_with('.') {
        return false;
    }
    base.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// A ZIP archive of frames, its frames in playing order.
pub struct FrameArchive<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    /// Path and archive index of each frame, in order.
    frames: Vec<(String, usize)>,
    fps: f64,
}

impl<'a> FrameArchive<'a> {
    /// Reads the archive's directory, orders the frames and reads `fps.txt`.
    pub fn open(bytes: &'a [u8]) -> Result<Self, EmbedError> {
        let mut zip = contain(|| ZipArchive::new(Cursor::new(bytes)))
            .map_err(|panic| decoder_panicked("ZIP", &panic))?
            .map_err(|e| decode_err(format!("not a readable ZIP archive of frames ({e})")))?;
        if zip.len() > MAX_ENTRIES {
            return Err(invalid(format!(
                "the archive holds {} entries, more than the {MAX_ENTRIES} accepted",
                zip.len()
            )));
        }
        let mut frames = Vec::new();
        let mut fps_entry = None;
        let mut total: u64 = 0;
        for i in 0..zip.len() {
            let entry = contain(|| zip.by_index_data(i))
                .map_err(|panic| decoder_panicked("ZIP", &panic))?
                .map_err(|e| decode_err(format!("entry {i}: {e}")))?;
            if entry.is_dir() {
                continue;
            }
            let name = entry
                .name()
                .map_err(|e| decode_err(format!("entry {i}: {e}")))?
                .into_owned();
            if name.rsplit('/').next() == Some(FPS_FILE) && !name.contains("__MACOSX") {
                if fps_entry.replace(i).is_some() {
                    return Err(invalid(format!("more than one {FPS_FILE}")));
                }
                continue;
            }
            if !is_frame_name(&name) {
                continue;
            }
            if entry.size() > MAX_FRAME_BYTES {
                return Err(invalid(format!(
                    "frame {name} is {} bytes uncompressed, more than the {} MiB accepted",
                    entry.size(),
                    MAX_FRAME_BYTES >> 20
                )));
            }
            total = total.saturating_add(entry.size());
            if total > MAX_TOTAL_BYTES {
                return Err(invalid(format!(
                    "the frames add up to more than {} MiB uncompressed",
                    MAX_TOTAL_BYTES >> 20
                )));
            }
            frames.push((name, i));
        }
        if frames.is_empty() {
            return Err(invalid(
                "the archive holds no frames (PNG, JPEG, WebP or GIF files)",
            ));
        }
        frames.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let fps = match fps_entry {
            None => DEFAULT_FPS,
            Some(i) => {
                let raw = read_entry(&mut zip, i, 64)?;
                let text = std::str::from_utf8(&raw)
                    .map_err(|_| invalid(format!("{FPS_FILE} is not text")))?;
                let fps: f64 = text.trim().parse().map_err(|_| {
                    invalid(format!(
                        "{FPS_FILE} must hold a number of frames per second, got {:?}",
                        text.trim()
                    ))
                })?;
                if !(MIN_FPS..=MAX_FPS).contains(&fps) {
                    return Err(invalid(format!(
                        "{FPS_FILE}: {fps} fps is outside [{MIN_FPS}, {MAX_FPS}]"
                    )));
                }
                fps
            }
        };
        Ok(Self { zip, frames, fps })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// Frame paths in playing order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.frames.iter().map(|(n, _)| n.as_str())
    }

    /// The bytes of frame `k` (in playing order).
    pub fn read_frame(&mut self, k: usize) -> Result<Vec<u8>, EmbedError> {
        let (_, i) = self.frames[k];
        read_entry(&mut self.zip, i, MAX_FRAME_BYTES)
    }

    /// Decodes frame `k` to 8-bit RGB.
    pub fn decode_frame(&mut self, k: usize) -> Result<RgbImage, EmbedError> {
        let budget = UploadBudget::default();
        let (rgb, _held) = self.decode_frame_within(k, &budget)?;
        Ok(rgb)
    }

    /// Decodes frame `k` to 8-bit RGB, its decode memory (from the frame's header) reserved in
    /// `budget` first and held until the returned reservation is dropped.
    pub fn decode_frame_within<'b>(
        &mut self,
        k: usize,
        budget: &'b UploadBudget,
    ) -> Result<(RgbImage, Reservation<'b>), EmbedError> {
        let bytes = self.read_frame(k)?;
        let decoded = read_header(&bytes).and_then(|header| {
            let cost = bytes.len() as u64 + header.decode_cost(Alpha::Drop);
            let held = budget.reserve(cost, format!("video frame ({})", header.describe()))?;
            Ok((decode_frame(&bytes)?, held))
        });
        decoded.map_err(|e| match e {
            EmbedError::Decode(m) => decode_err(format!("frame {}: {m}", self.frames[k].0)),
            EmbedError::InvalidInput(m) => invalid(format!("frame {}: {m}", self.frames[k].0)),
            EmbedError::UnsupportedFormat(m) => {
                EmbedError::UnsupportedFormat(format!("video frame {}: {m}", self.frames[k].0))
            }
            other => other,
        })
    }
}

/// Reads one entry, refusing more than `cap` bytes or more than its declared size.
fn read_entry(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    i: usize,
    cap: u64,
) -> Result<Vec<u8>, EmbedError> {
    contain(|| read_entry_unguarded(zip, i, cap))
        .unwrap_or_else(|panic| Err(decoder_panicked("ZIP", &panic)))
}

fn read_entry_unguarded(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    i: usize,
    cap: u64,
) -> Result<Vec<u8>, EmbedError> {
    let mut file = zip.by_index(i).map_err(|e| {
        decode_err(format!(
            "entry {i} cannot be read ({e}); encrypted entries are not supported"
        ))
    })?;
    let name = file.name().map(|n| n.into_owned()).unwrap_or_default();
    let declared = file.size();
    if declared > cap {
        return Err(invalid(format!(
            "{name} is {declared} bytes uncompressed, more than the {cap} accepted"
        )));
    }
    let mut buf = Vec::with_capacity(declared as usize);
    (&mut file)
        .take(declared + 1)
        .read_to_end(&mut buf)
        .map_err(|e| decode_err(format!("{name}: {e}")))?;
    if buf.len() as u64 > declared {
        return Err(invalid(format!(
            "{name} holds more data than the {declared} bytes its header declares"
        )));
    }
    if (buf.len() as u64) < declared {
        return Err(decode_err(format!(
            "{name} holds {} bytes, its header says {declared}",
            buf.len()
        )));
    }
    Ok(buf)
}

/// Decodes a frame as OpenCV's `imdecode(IMREAD_COLOR)` does: EXIF orientation applied, alpha
/// dropped, greyscale replicated, 16-bit samples cut to their high byte.
pub fn decode_frame(bytes: &[u8]) -> Result<RgbImage, EmbedError> {
    let img = decode_oriented(bytes)?;
    let (w, h) = (img.width(), img.height());
    Ok(match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => RgbImage::from_fn(w, h, |x, y| {
            let p = i.get_pixel(x, y).0;
            image::Rgb([p[0], p[1], p[2]])
        }),
        DynamicImage::ImageLuma8(i) => RgbImage::from_fn(w, h, |x, y| {
            let v = i.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA8(i) => RgbImage::from_fn(w, h, |x, y| {
            let v = i.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageRgb16(i) => RgbImage::from_fn(w, h, |x, y| {
            let p = i.get_pixel(x, y).0;
            image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
        }),
        DynamicImage::ImageRgba16(i) => RgbImage::from_fn(w, h, |x, y| {
            let p = i.get_pixel(x, y).0;
            image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
        }),
        DynamicImage::ImageLuma16(i) => RgbImage::from_fn(w, h, |x, y| {
            let v = (i.get_pixel(x, y).0[0] >> 8) as u8;
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(i) => RgbImage::from_fn(w, h, |x, y| {
            let v = (i.get_pixel(x, y).0[0] >> 8) as u8;
            image::Rgb([v, v, v])
        }),
        other => other.into_rgb8(),
    })
}

/// `x` as a double, `x = mant * 2^exp` exactly.
fn decompose(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if raw_exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), raw_exp - 1075)
    }
}

/// `2^-k` for `0 <= k <= 1022`.
fn pow2_neg(k: u32) -> f64 {
    f64::from_bits(((1023 - k as u64) & 0x7ff) << 52)
}

/// `num / (5 * 2^k)` correctly rounded to a double, as Python's `float(Fraction)` does.
fn div5_pow2(num: u128, k: u32) -> f64 {
    if num == 0 {
        return 0.0;
    }
    // Scale up so that the integer quotient has far more than 53 significant bits; a non-zero
    // remainder then only needs to act as a sticky bit for round-to-nearest-even.
    let s = num.leading_zeros().saturating_sub(1);
    let n = num << s;
    let (q, r) = (n / 5, n % 5);
    ((q | u128::from(r != 0)) as f64) * pow2_neg(k + s)
}

/// The frames `FrameVideo.get_clip` returns for each clip of `ConstantClipsPerVideoSampler`
/// (clip_duration 2, 5 clips) in a video of `n` frames at `fps`: `start..end` per clip.
pub fn clip_ranges(n: usize, fps: f64) -> Result<Vec<(usize, usize)>, EmbedError> {
    if n == 0 {
        return Err(invalid("the video has no frames"));
    }
    if !(MIN_FPS..=MAX_FPS).contains(&fps) {
        return Err(invalid(format!(
            "{fps} fps is outside [{MIN_FPS}, {MAX_FPS}]"
        )));
    }
    let clip = CLIP_SECONDS as f64;
    let duration = n as f64 / fps;
    // `Fraction(max(video_duration - clip_duration, 0))`: the float difference, exactly.
    let max_start = (duration - clip).max(0.0);
    let (mant, exp) = decompose(max_start);
    // Durations here are at most 10,000 s and max_start is 0 or at least 2^-51, so the start
    // times k * max_start / 5 are num / (5 * 2^-exp) with small integers.
    if max_start > 0.0 && !(-120..0).contains(&exp) {
        return Err(invalid(format!("unsupported duration {duration} s")));
    }
    let k = exp.unsigned_abs();
    (0..CLIPS)
        .map(|i| {
            // clip i: [start, start + 2) seconds, start = i * max_start / 5 (exact rationals).
            let num = mant as u128 * i as u128;
            let start = if max_start > 0.0 {
                div5_pow2(num, k)
            } else {
                0.0
            };
            // `min(end_sec, duration)`: with 5 clips, end < duration whenever max_start > 0
            // (end <= 4/5 * max_start + 2), and end = 2 >= duration otherwise.
            let end = if max_start > 0.0 {
                div5_pow2(num + ((5 * clip as u128) << k), k)
            } else {
                duration
            };
            // `math.ceil(fps * t)`, `t` a `Fraction` made a float.
            let first = (fps * start).ceil() as usize;
            let last = ((fps * end).ceil() as usize).min(n);
            if first >= last {
                return Err(invalid(format!(
                    "clip {i} of the video ({start} s to {end} s at {fps} fps) holds no frame"
                )));
            }
            Ok((first, last))
        })
        .collect()
}

/// The frames kept of each clip (`UniformTemporalSubsample(2)`: its first and last frame).
pub fn sampled_frames(n: usize, fps: f64) -> Result<Vec<[usize; FRAMES_PER_CLIP]>, EmbedError> {
    Ok(clip_ranges(n, fps)?
        .into_iter()
        .map(|(a, b)| {
            // torch.linspace(0, t - 1, 2).long(): exactly the two ends.
            [a, b - 1]
        })
        .collect())
}

/// Source indices and weights of torch's bilinear interpolation (align_corners=False) for
/// output positions `range` of an axis resized from `in_size` to `out_size`.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

fn axis(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Axis {
    let n = range.len();
    let mut a = Axis {
        i0: Vec::with_capacity(n),
        i1: Vec::with_capacity(n),
        w0: Vec::with_capacity(n),
        w1: Vec::with_capacity(n),
    };
    let scale = in_size as f32 / out_size as f32;
    for d in range {
        if in_size == out_size {
            a.i0.push(d);
            a.i1.push(d);
            a.w0.push(1.0);
            a.w1.push(0.0);
            continue;
        }
        let r = scale * (d as f32 + 0.5) - 0.5;
        let r = if r < 0.0 { 0.0 } else { r };
        let i0 = (r.floor() as usize).min(in_size - 1);
        let l = (r - i0 as f32).clamp(0.0, 1.0);
        a.i0.push(i0);
        a.i1.push(if i0 < in_size - 1 { i0 + 1 } else { i0 });
        a.w0.push(1.0 - l);
        a.w1.push(l);
    }
    a
}

/// Size after `ShortSideScale(size)`: `(height, width)`.
pub fn scaled_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let s = size as f64;
    if w < h {
        ((h as f64 / w as f64 * s).floor() as usize, size)
    } else {
        (size, (w as f64 / h as f64 * s).floor() as usize)
    }
}

/// Top-left corners `(y, x)` of the three `size`-pixel crops of `uniform_crop` in a `(h, w)`
/// frame.
pub fn crop_offsets(h: usize, w: usize, size: usize) -> [(usize, usize); CROPS] {
    // `int(math.ceil((size_dim - size) / 2))` for the centre.
    let centre = |n: usize| (n - size).div_ceil(2);
    let (cy, cx) = (centre(h), centre(w));
    if h > w {
        [(0, cx), (cy, cx), (h - size, cx)]
    } else {
        [(cy, 0), (cy, cx), (cy, w - size)]
    }
}

/// One frame's three normalised crops, `[CROPS, 3, size, size]`: `/ 255`, bilinear short-side
/// scale to `size`, CLIP normalisation, crops.
pub fn frame_crops(rgb: &RgbImage, size: usize) -> Vec<f32> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let (nh, nw) = scaled_size(h, w, size);
    let lut: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let raw = rgb.as_raw();
    let px = |y: usize, x: usize, c: usize| lut[raw[(y * w + x) * 3 + c] as usize];
    let plane = size * size;
    let mut out = vec![0f32; CROPS * 3 * plane];
    for (k, &(oy, ox)) in crop_offsets(nh, nw, size).iter().enumerate() {
        let rows = axis(h, nh, oy..oy + size);
        let cols = axis(w, nw, ox..ox + size);
        for c in 0..3 {
            let (mean, std) = (CLIP_MEAN[c], CLIP_STD[c]);
            let dst = &mut out[(k * 3 + c) * plane..(k * 3 + c + 1) * plane];
            for y in 0..size {
                let (h0, h1, hw0, hw1) = (rows.i0[y], rows.i1[y], rows.w0[y], rows.w1[y]);
                for x in 0..size {
                    let (w0, w1, ww0, ww1) = (cols.i0[x], cols.i1[x], cols.w0[x], cols.w1[x]);
                    let t0 = px(h0, w0, c).mul_add(ww0, px(h0, w1, c) * ww1);
                    let t1 = px(h1, w0, c).mul_add(ww0, px(h1, w1, c) * ww1);
                    let v = t0.mul_add(hw0, t1 * hw1);
                    dst[y * size + x] = (v - mean) / std;
                }
            }
        }
    }
    out
}

/// A ZIP archive of frames to the vision tower's video input `[15, 3, 2, 224, 224]`
/// (clip-major, then crop), ready to be averaged over its 15 rows.
pub fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
    preprocess_at(bytes, SIZE)
}

/// [`preprocess`] for a vision tower of `size`-pixel images: the same clips and frames, the
/// frames scaled to `size` on their short side and cropped to `size` x `size`.
pub fn preprocess_at(bytes: &[u8], size: usize) -> Result<Vec<f32>, EmbedError> {
    preprocess_within(bytes, size, &UploadBudget::default())
}

/// [`preprocess_at`] within a decode budget: frames are decoded one at a time, each reserving
/// the memory its header says it needs (more than the per-decode limit:
/// [`EmbedError::InvalidInput`]).
pub fn preprocess_within(
    bytes: &[u8],
    size: usize,
    budget: &UploadBudget,
) -> Result<Vec<f32>, EmbedError> {
    let mut archive = FrameArchive::open(bytes)?;
    let picks = sampled_frames(archive.len(), archive.fps())?;
    let mut crops: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    let mut first: Option<(usize, (u32, u32))> = None;
    for &f in picks.iter().flatten() {
        if crops.contains_key(&f) {
            continue;
        }
        let (rgb, _held) = archive.decode_frame_within(f, budget)?;
        match first {
            None => first = Some((f, rgb.dimensions())),
            Some((g, dims)) if dims != rgb.dimensions() => {
                let names: Vec<&str> = archive.names().collect();
                return Err(invalid(format!(
                    "frames differ in size: {} is {}x{}, {} is {}x{}",
                    names[g],
                    dims.0,
                    dims.1,
                    names[f],
                    rgb.width(),
                    rgb.height()
                )));
            }
            _ => {}
        }
        crops.insert(f, frame_crops(&rgb, size));
    }
    let plane = size * size;
    let mut out = vec![0f32; input_len(size)];
    for (clip, frames) in picks.iter().enumerate() {
        for (t, f) in frames.iter().enumerate() {
            let src = &crops[f];
            for k in 0..CROPS {
                for c in 0..3 {
                    let d = (((clip * CROPS + k) * 3 + c) * FRAMES_PER_CLIP + t) * plane;
                    let s = (k * 3 + c) * plane;
                    out[d..d + plane].copy_from_slice(&src[s..s + plane]);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_of_frame_names() {
        let mut names = vec![
            "frame10.png",
            "frame2.png",
            "frame1.png",
            "frame01.png",
            "a/frame3.png",
            "10.png",
            "9.png",
            "frame2b.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "9.png",
                "10.png",
                "a/frame3.png",
                "frame01.png",
                "frame1.png",
                "frame2.png",
                "frame2b.png",
                "frame10.png"
            ]
        );
    }

    #[test]
    fn frame_names() {
        assert!(is_frame_name("clip/f001.PNG"));
        assert!(is_frame_name("f.jpeg"));
        assert!(!is_frame_name("__MACOSX/clip/._f001.png"));
        assert!(!is_frame_name("clip/.DS_Store"));
        assert!(!is_frame_name("clip/._f1.png"));
        assert!(!is_frame_name("notes.txt"));
        assert!(!is_frame_name("png"));
    }

    #[test]
    fn exact_rational_to_float() {
        // float(Fraction(3, 5)), float(Fraction(7 * 2**-3, 5)), float(Fraction(2, 5) + 2)
        assert_eq!(div5_pow2(3, 0), 0.6);
        assert_eq!(div5_pow2(7, 3), 7.0 / 40.0);
        assert_eq!(div5_pow2(2 + 10, 0), 2.4);
        assert_eq!(div5_pow2(0, 7), 0.0);
    }

    #[test]
    fn short_videos_repeat_one_clip() {
        // 3 frames at 30 fps: 0.1 s, five clips of all three frames.
        assert_eq!(clip_ranges(3, 30.0).unwrap(), vec![(0, 3); 5]);
        assert_eq!(sampled_frames(1, 30.0).unwrap(), vec![[0, 0]; 5]);
        // Exactly 2 s.
        assert_eq!(clip_ranges(48, 24.0).unwrap(), vec![(0, 48); 5]);
    }

    #[test]
    fn long_videos_spread_clips() {
        // 4 s at 25 fps: starts 0, 0.4, 0.8, 1.2, 1.6 s.
        let r = clip_ranges(100, 25.0).unwrap();
        assert_eq!(r, vec![(0, 50), (10, 60), (20, 70), (30, 80), (40, 90)]);
        assert!(clip_ranges(10, 0.5).is_err());
    }

    #[test]
    fn crops_follow_uniform_crop() {
        assert_eq!(scaled_size(240, 320, SIZE), (224, 298));
        assert_eq!(scaled_size(320, 240, SIZE), (298, 224));
        assert_eq!(scaled_size(100, 100, SIZE), (224, 224));
        assert_eq!(crop_offsets(224, 298, SIZE), [(0, 0), (0, 37), (0, 74)]);
        assert_eq!(crop_offsets(224, 299, SIZE), [(0, 0), (0, 38), (0, 75)]);
        assert_eq!(crop_offsets(298, 224, SIZE), [(0, 0), (37, 0), (74, 0)]);
        // A 64-pixel model: 240x320 scales to 64x85, crops at x = 0, 11, 21.
        assert_eq!(scaled_size(240, 320, 64), (64, 85));
        assert_eq!(crop_offsets(64, 85, 64), [(0, 0), (0, 11), (0, 21)]);
    }

    #[test]
    fn smaller_models_get_crops_of_their_size() {
        // A 64x64 frame at 64 pixels: the three crops are the frame itself.
        let rgb = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = frame_crops(&rgb, 64);
        assert_eq!(out.len(), CROPS * 3 * 64 * 64);
        let v = (9.0f32 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert_eq!(out[9], v);
        assert_eq!(out[..3 * 64 * 64], out[2 * 3 * 64 * 64..]);
        assert_eq!(input_len(64), 15 * 3 * 2 * 64 * 64);
    }

    #[test]
    fn identity_scale_is_a_copy() {
        let rgb = RgbImage::from_fn(224, 224, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = frame_crops(&rgb, SIZE);
        let v = (9.0f32 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert_eq!(out[9], v);
        assert_eq!(
            out[..3 * SIZE * SIZE],
            out[3 * SIZE * SIZE..6 * SIZE * SIZE]
        );
    }
}
