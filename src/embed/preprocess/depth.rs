//! Depth maps for ImageBind: a 16-bit greyscale PNG in millimetres or a `.npy` array in metres,
//! as a `[1, 224, 224]` map in metres.
//!
//! The official ImageBind code ships no depth loader (its `data.py` covers vision, text, audio
//! and video only), so the layout here is omnibind's: the map in metres, centre-cropped to
//! 224x224 (maps smaller than that on a side are refused). The official training converted
//! depth to disparity; which conversion the released checkpoint expects is not published, so
//! this layout is exact to the reference *model* (tests/it/imagebind.rs) but not a claim about
//! the released weights' training input.

use crate::embed::imagebind::npy::read_npy;
use crate::embed::EmbedError;

/// Size of the square the maps are cropped to.
pub const SIZE: usize = 224;

/// Decodes a depth file (16-bit PNG in mm, or `.npy` `[H, W]` / `[1, H, W]` in metres) into
/// metres, row-major, with its height and width.
pub fn decode_depth(bytes: &[u8]) -> Result<(Vec<f32>, usize, usize), EmbedError> {
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
        if a.data.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(EmbedError::InvalidInput(
                "depth .npy holds negative or non-finite values".into(),
            ));
        }
        return Ok((a.data, h, w));
    }
    if !bytes.starts_with(b"\x89PNG") {
        return Err(EmbedError::UnsupportedFormat(
            "depth must be a 16-bit PNG (millimetres) or a .npy array (metres)".into(),
        ));
    }
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
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
    Ok((data, h, w))
}

/// Centre crop of a row-major `h x w` map to `size x size` (offsets rounded down).
pub fn centre_crop(data: &[f32], h: usize, w: usize, size: usize) -> Result<Vec<f32>, EmbedError> {
    if h < size || w < size {
        return Err(EmbedError::InvalidInput(format!(
            "map of {w}x{h} is smaller than {size}x{size}"
        )));
    }
    let (top, left) = ((h - size) / 2, (w - size) / 2);
    Ok((top..top + size)
        .flat_map(|y| data[y * w + left..y * w + left + size].iter().copied())
        .collect())
}

/// Depth bytes to the depth tower's `[1, 224, 224]` input.
pub fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
    let (data, h, w) = decode_depth(bytes)?;
    centre_crop(&data, h, w, SIZE)
}
