//! Thermal images for ImageBind: 8- or 16-bit greyscale PNG or TIFF, scaled to [0, 1]
//! (divided by 255 or 65535), resized so the shorter side is 224 (torchvision `Resize(224)`,
//! antialiased bilinear on the float map) and centre-cropped (`CenterCrop(224)`):
//! `[1, 224, 224]`. A model with another `inputs.image_size` gets that size in place of 224.
//!
//! The official ImageBind code ships no thermal loader; ImageBind's thermal data (LLVIP) are
//! 8-bit single-channel images and this layout is the plain `ToTensor` scaling of them. It is
//! exact to the reference model on the fixtures, not a claim about the released weights'
//! training input.

use super::decoder_panicked;
use super::image::read_header_as;
use super::map::{resize_and_centre_crop, resize_cost, Map};
use crate::embed::{EmbedError, UploadBudget};
use crate::guard::contain;

/// The format of a thermal image, from its bytes.
fn thermal_format(bytes: &[u8]) -> Result<image::ImageFormat, EmbedError> {
    if bytes.starts_with(b"\x89PNG") {
        Ok(image::ImageFormat::Png)
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Ok(image::ImageFormat::Tiff)
    } else {
        Err(EmbedError::UnsupportedFormat(
            "thermal images must be greyscale PNG or TIFF".into(),
        ))
    }
}

/// Decodes a thermal image into [0, 1] intensities.
pub fn decode_thermal(bytes: &[u8]) -> Result<Map, EmbedError> {
    let format = thermal_format(bytes)?;
    let img = contain(|| image::load_from_memory_with_format(bytes, format))
        .map_err(|panic| decoder_panicked("thermal image", &panic))?
        .map_err(|e| EmbedError::Decode(format!("thermal image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match img {
        image::DynamicImage::ImageLuma8(g) => {
            g.as_raw().iter().map(|&v| v as f32 / 255.0).collect()
        }
        image::DynamicImage::ImageLuma16(g) => {
            g.as_raw().iter().map(|&v| v as f32 / 65535.0).collect()
        }
        other => {
            return Err(EmbedError::InvalidInput(format!(
                "thermal images must be 8- or 16-bit greyscale, got {:?}",
                other.color()
            )))
        }
    };
    Ok(Map::new(data, h, w))
}

/// [`preprocess`] within a decode budget: the memory the image's header says it needs (the
/// file, the decoded samples, the float map and the resize) is reserved in `budget` before any
/// pixel is decoded.
pub fn preprocess_within(
    bytes: &[u8],
    size: usize,
    budget: &UploadBudget,
) -> Result<Vec<f32>, EmbedError> {
    let header = read_header_as(bytes, thermal_format(bytes)?)
        .map_err(|e| EmbedError::Decode(format!("thermal image: {e}")))?;
    let px = header.pixels();
    let cost = bytes.len() as u64
        + px * header.color.bytes_per_pixel() as u64
        + 4 * px
        + resize_cost(header.height as u64, header.width as u64, size as u64);
    let what = format!("thermal image of {}x{} pixels", header.width, header.height);
    let _held = budget.reserve(cost, what)?;
    preprocess(bytes, size)
}

/// Thermal bytes to the thermal tower's `[1, size, size]` input (`size` is the model's
/// `inputs.image_size`, 224 in the official model).
pub fn preprocess(bytes: &[u8], size: usize) -> Result<Vec<f32>, EmbedError> {
    Ok(resize_and_centre_crop(&decode_thermal(bytes)?, size)?.data)
}
