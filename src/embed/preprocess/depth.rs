//! Depth maps for ImageBind: a 16-bit greyscale PNG in millimetres or a `.npy` array in metres,
//! turned into the normalised disparity map the depth tower takes, `[1, 224, 224]` (the square is
//! the model's `inputs.image_size`; 224 in the official model).
//!
//! The official ImageBind repository ships no depth loader. ImageBind was trained on SUN RGB-D
//! depth converted to disparity the way Omnivore (the same authors' earlier model) does it, and
//! this module follows that recipe, published by the authors in facebookresearch/omnivore#12
//! and Omnivore's RGB-D transforms:
//! 1. depth in metres (PNG value / 1000); a value of 0 marks a missing measurement;
//! 2. clip to `[min_depth_m, max_depth_m]` (0.01 to 50 m) and convert to disparity,
//!    `baseline_m * focal_length_px / depth` (f32). The defaults are the Kinect v1 camera of
//!    SUN RGB-D / NYU Depth v2 (focal length 518.857901 px, baseline 0.075 m); set the
//!    values of your camera in the model's `config.json` (`inputs.depth`). Missing pixels get
//!    disparity 0 (infinitely far): SUN RGB-D's maps were hole-filled, so training saw no
//!    holes, and "far" disturbs a scene less than the recipe's "nearest possible";
//! 3. torchvision `Resize(224)` (antialiased bilinear on the float map) and `CenterCrop(224)`
//!    (the model's image size in place of 224);
//! 4. Omnivore's `DepthNorm`: clamp at `max_disparity` (75) and divide by it; then normalise
//!    with mean 0.0418 and standard deviation 0.0295.
//!
//! tests/it/imagebind.rs checks steps 1-4 against the same recipe written with NumPy and
//! torchvision, and the tower against the official model.

use serde::{Deserialize, Serialize};

use super::decoder_panicked;
use super::image::read_header_as;
use super::map::{resize_and_centre_crop, resize_cost, Map};
use super::npy::{declared_values, decode_cost as decode_npy_cost, read_npy};
use crate::embed::{EmbedError, UploadBudget};
use crate::guard::contain;

/// Size of the square the official towers take (a model's `inputs.image_size`).
pub const SIZE: usize = 224;

/// Depth-to-disparity conversion and normalisation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DepthConfig {
    /// Horizontal focal length of the depth camera, in pixels of the uploaded map.
    pub focal_length_px: f64,
    /// Stereo / projector baseline of the depth camera, in metres.
    pub baseline_m: f64,
    pub min_depth_m: f32,
    pub max_depth_m: f32,
    /// Disparities are clamped here and divided by it (Omnivore's `DepthNorm(max_depth=75)`).
    pub max_disparity: f32,
    pub mean: f32,
    pub std: f32,
}

impl Default for DepthConfig {
    fn default() -> Self {
        Self {
            focal_length_px: 518.857901,
            baseline_m: 0.075,
            min_depth_m: 0.01,
            max_depth_m: 50.0,
            max_disparity: 75.0,
            mean: 0.0418,
            std: 0.0295,
        }
    }
}

impl DepthConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            self.focal_length_px,
            self.baseline_m,
            self.min_depth_m as f64,
            self.max_depth_m as f64,
            self.max_disparity as f64,
            self.std as f64,
        ];
        if positive.iter().any(|v| !(v.is_finite() && *v > 0.0)) || !self.mean.is_finite() {
            return Err("inputs.depth values must be finite and positive".into());
        }
        if self.min_depth_m >= self.max_depth_m {
            return Err("inputs.depth.min_depth_m must be below max_depth_m".into());
        }
        Ok(())
    }
}

/// Decodes a depth file (16-bit PNG in mm, or `.npy` `[H, W]` / `[1, H, W]` in metres) into
/// metres.
pub fn decode_depth(bytes: &[u8]) -> Result<Map, EmbedError> {
    if bytes.starts_with(b"\x93NUMPY") {
        let a = read_npy(bytes)?;
        let (h, w) = match a.shape[..] {
            [h, w] | [1, h, w] => (h, w),
            ref s => {
                return Err(EmbedError::InvalidInput(format!(
                    "depth .npy must be [H, W] or [1, H, W], got {s:?}"
                )))
            }
        };
        if let Some(v) = a.data.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(EmbedError::InvalidInput(format!(
                "depth .npy holds {v}: depths must be finite metres, 0 for missing"
            )));
        }
        return Ok(Map::new(a.data, h, w));
    }
    if !bytes.starts_with(b"\x89PNG") {
        return Err(EmbedError::UnsupportedFormat(
            "depth must be a 16-bit PNG (millimetres) or a .npy array (metres)".into(),
        ));
    }
    let img = contain(|| image::load_from_memory_with_format(bytes, image::ImageFormat::Png))
        .map_err(|panic| decoder_panicked("depth PNG", &panic))?
        .map_err(|e| EmbedError::Decode(format!("depth PNG: {e}")))?;
    let img = match img {
        image::DynamicImage::ImageLuma16(g) => g,
        other => {
            return Err(EmbedError::InvalidInput(format!(
                "depth PNG must be 16-bit greyscale (millimetres), got {:?}",
                other.color()
            )))
        }
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = img.as_raw().iter().map(|&mm| mm as f32 / 1000.0).collect();
    Ok(Map::new(data, h, w))
}

/// Metres to disparity (step 2); 0 (missing) stays 0.
pub fn to_disparity(metres: &Map, cfg: &DepthConfig) -> Map {
    let k = (cfg.baseline_m * cfg.focal_length_px) as f32;
    let data = metres
        .data
        .iter()
        .map(|&d| {
            if d > 0.0 {
                k / d.clamp(cfg.min_depth_m, cfg.max_depth_m)
            } else {
                0.0
            }
        })
        .collect();
    Map::new(data, metres.height, metres.width)
}

/// Most bytes [`preprocess`] holds for these depth bytes, the file included, from the PNG or
/// `.npy` header (the decoded samples, the map in metres and its disparity, the resize).
pub fn decode_cost(bytes: &[u8], size: usize) -> Result<(u64, String), EmbedError> {
    if bytes.starts_with(b"\x93NUMPY") {
        let values = declared_values(bytes).unwrap_or(bytes.len() as u64);
        let side = (values as f64).sqrt() as u64;
        let what = format!("depth .npy of {values} values");
        return Ok((
            decode_npy_cost(bytes) + 4 * values + resize_cost(side, side, size as u64),
            what,
        ));
    }
    if !bytes.starts_with(b"\x89PNG") {
        return Err(EmbedError::UnsupportedFormat(
            "depth must be a 16-bit PNG (millimetres) or a .npy array (metres)".into(),
        ));
    }
    let header = read_header_as(bytes, image::ImageFormat::Png)
        .map_err(|e| EmbedError::Decode(format!("depth PNG: {e}")))?;
    let (h, w) = (header.height as u64, header.width as u64);
    let px = header.pixels();
    let cost = bytes.len() as u64
        + px * header.color.bytes_per_pixel() as u64
        + 2 * 4 * px
        + resize_cost(h, w, size as u64);
    Ok((cost, format!("depth PNG of {w}x{h} pixels")))
}

/// [`preprocess`] within a decode budget: the memory the header says it needs is reserved in
/// `budget` before the map is decoded.
pub fn preprocess_within(
    bytes: &[u8],
    cfg: &DepthConfig,
    size: usize,
    budget: &UploadBudget,
) -> Result<Vec<f32>, EmbedError> {
    let (cost, what) = decode_cost(bytes, size)?;
    let _held = budget.reserve(cost, what)?;
    preprocess(bytes, cfg, size)
}

/// Depth bytes to the depth tower's `[1, size, size]` input (`size` is the model's
/// `inputs.image_size`, [`SIZE`] in the official model).
pub fn preprocess(bytes: &[u8], cfg: &DepthConfig, size: usize) -> Result<Vec<f32>, EmbedError> {
    let disparity = to_disparity(&decode_depth(bytes)?, cfg);
    let crop = resize_and_centre_crop(&disparity, size)?;
    Ok(crop
        .data
        .into_iter()
        .map(|v| (v.min(cfg.max_disparity) / cfg.max_disparity - cfg.mean) / cfg.std)
        .collect())
}
