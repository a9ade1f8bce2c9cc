//! JPEG decoding as Pillow does it.
//!
//! The reference pipelines (CLIP's and ImageBind's image transforms) read images with Pillow,
//! which decodes JPEG with libjpeg-turbo: the accurate integer IDCT, "fancy" (triangular)
//! chroma upsampling, block smoothing of progressive scans, and its own YCbCr-to-RGB tables.
//! A different decoder rounds differently: the pure-Rust decoder (zune-jpeg) was measured up to
//! 4 levels of 255 away, which moved 4:2:0 photos 4e-6 in cosine from the reference.
//!
//! With the `libjpeg-turbo` feature (on by default) JPEG is decoded by the libjpeg-turbo decoder
//! as the `mozjpeg` crate builds it from source (mozjpeg is a fork of libjpeg-turbo whose changes
//! are to the encoder; it needs only a C compiler, no system library). The pixels are then those
//! of Pillow bit for bit, greyscale and CMYK included (`tests/fixtures/jpeg/`). Without the
//! feature, the pure-Rust decoder of the `image` crate is used.
//!
//! Errors inside the C library unwind as Rust panics (the `mozjpeg` crate's error manager, which
//! also silences libjpeg's warnings on stderr); they are contained here and become
//! [`crate::embed::EmbedError::Decode`].

#[cfg(feature = "libjpeg-turbo")]
use image::{DynamicImage, GrayImage, RgbImage};

#[cfg(feature = "libjpeg-turbo")]
use crate::embed::EmbedError;

/// Walks the marker segments of a JPEG from its start: `visit` sees each marker with the offset
/// of its segment's length field and that length, and ends the walk with an answer. A stream
/// that does not start as a JPEG, stops being a marker sequence or ends first answers `false`.
pub(crate) fn walk_markers(
    bytes: &[u8],
    mut visit: impl FnMut(u8, usize, usize) -> Option<bool>,
) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if let Some(answer) = visit(marker, i + 2, len) {
            return answer;
        }
        i += 2 + len;
    }
    false
}

/// Whether the JPEG's frame is progressive (SOF2, SOF6, SOF10 or SOF14). A progressive JPEG is
/// decoded from coefficients of the whole picture held at once (two bytes per sample), which
/// the decode budget counts.
pub fn jpeg_is_progressive(bytes: &[u8]) -> bool {
    walk_markers(bytes, |marker, _, _| match marker {
        0xC2 | 0xC6 | 0xCA | 0xCE => Some(true),
        0xC4 | 0xC8 | 0xCC => None,
        0xC0..=0xCF => Some(false),
        _ => None,
    })
}

/// Decodes a JPEG with libjpeg-turbo to 8-bit grey (one-channel JPEGs) or RGB, as Pillow's
/// `Image.open(...)` followed by `convert("RGB")` gives it (grey stays grey here; the caller's
/// conversion repeats it into three channels as Pillow does). EXIF orientation is not applied.
/// `size` is the width and height that the caller's header reading found (and checked against
/// the limits); a file for which libjpeg-turbo finds another is refused before decoding.
#[cfg(feature = "libjpeg-turbo")]
pub fn decode_jpeg(bytes: &[u8], size: (u32, u32)) -> Result<DynamicImage, EmbedError> {
    let decoded = crate::guard::contain(|| decode_unguarded(bytes, size));
    match decoded {
        Ok(result) => result.map_err(|e| EmbedError::Decode(format!("JPEG: {e}"))),
        Err(panic) => Err(EmbedError::Decode(format!(
            "JPEG: {}",
            panic.trim_start_matches("libjpeg fatal error: ")
        ))),
    }
}

#[cfg(feature = "libjpeg-turbo")]
fn decode_unguarded(bytes: &[u8], size: (u32, u32)) -> std::io::Result<DynamicImage> {
    use mozjpeg::{ColorSpace, Decompress};

    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let decompress = Decompress::new_mem(bytes)?;
    let (width, height) = decompress.size();
    let (w, h) = (
        u32::try_from(width).map_err(|_| invalid("width"))?,
        u32::try_from(height).map_err(|_| invalid("height"))?,
    );
    if (w, h) != size {
        return Err(invalid(&format!(
            "the frame is {w}x{h} pixels where the header said {}x{}",
            size.0, size.1
        )));
    }
    Ok(match decompress.color_space() {
        ColorSpace::JCS_GRAYSCALE => {
            let mut started = decompress.grayscale()?;
            let grey = started.read_scanlines::<u8>()?;
            started.finish()?;
            DynamicImage::ImageLuma8(
                GrayImage::from_raw(w, h, grey).ok_or_else(|| invalid("short image"))?,
            )
        }
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut started = decompress.to_colorspace(ColorSpace::JCS_CMYK)?;
            let cmyk = started.read_scanlines::<u8>()?;
            started.finish()?;
            let rgb = cmyk
                .chunks_exact(4)
                .flat_map(|p| pillow_cmyk_to_rgb([p[0], p[1], p[2], p[3]]))
                .collect();
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(w, h, rgb).ok_or_else(|| invalid("short image"))?,
            )
        }
        _ => {
            let mut started = decompress.rgb()?;
            let rgb = started.read_scanlines::<u8>()?;
            started.finish()?;
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(w, h, rgb).ok_or_else(|| invalid("short image"))?,
            )
        }
    })
}

/// One CMYK sample as Pillow turns it into RGB: Pillow reads every four-channel JPEG as
/// inverted ("CMYK;I", Adobe's convention, which its own encoder and Photoshop write), then
/// converts each channel as `255 - k - c * (255 - k) / 255`, rounded as its `MULDIV255` does.
pub fn pillow_cmyk_to_rgb(stored: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = stored.map(|v| 255 - i32::from(v));
    let not_k = 255 - k;
    let channel = |v: i32| {
        let t = v * not_k + 128;
        let scaled = ((t >> 8) + t) >> 8;
        (not_k - scaled).clamp(0, 255) as u8
    };
    [channel(c), channel(m), channel(y)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressive_frames_are_told_from_the_markers() {
        // SOI, an APP0 segment of 4 bytes, then the frame marker.
        let jpeg = |sof: u8| vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, sof, 0, 11];
        assert!(jpeg_is_progressive(&jpeg(0xC2)));
        assert!(!jpeg_is_progressive(&jpeg(0xC0)));
        assert!(!jpeg_is_progressive(&jpeg(0xC1)));
        // A Huffman table (C4) before the frame is skipped, not taken for a frame.
        let mut dht = vec![0xFF, 0xD8, 0xFF, 0xC4, 0, 2];
        dht.extend_from_slice(&[0xFF, 0xC2, 0, 11]);
        assert!(jpeg_is_progressive(&dht));
        assert!(!jpeg_is_progressive(b"not a jpeg"));
    }

    /// `tests/fixtures/jpeg/` (`make_jpegs.py`): 14 JPEGs (4:4:4, 4:2:0, 4:2:2, odd sizes,
    /// greyscale, progressive, optimised Huffman tables, CMYK, EXIF orientations 3 and 6, low
    /// quality) with the pixels Pillow decodes from each, turned upright. Issue: the pure-Rust
    /// decoder was up to 4 levels of 255 away from them.
    #[cfg(feature = "libjpeg-turbo")]
    #[test]
    fn fixtures_decode_to_pillows_pixels_bit_for_bit() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        names.sort();
        assert!(names.len() >= 8, "{names:?}");
        for jpg in names {
            let ours = super::super::image::decode_rgb(&std::fs::read(&jpg).unwrap()).unwrap();
            let png = jpg.with_extension("rgb.png");
            let pil = image::open(&png).unwrap().into_rgb8();
            assert_eq!(ours.dimensions(), pil.dimensions(), "{}", jpg.display());
            let differ = ours
                .as_raw()
                .iter()
                .zip(pil.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differ, 0, "{}: {differ} values differ", jpg.display());
        }
    }

    /// Errors of the C library (a corrupt header, data cut short) are errors, never panics that
    /// escape or output on stderr.
    #[cfg(feature = "libjpeg-turbo")]
    #[test]
    fn broken_jpegs_are_decode_errors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
        let good = std::fs::read(dir.join("baseline_420_320x240.jpg")).unwrap();
        let size = (320, 240);
        for cut in [2, 20, 200] {
            let result = decode_jpeg(&good[..cut], size);
            assert!(matches!(result, Err(EmbedError::Decode(_))), "{result:?}");
        }
        let mut bad_frame = good.clone();
        let sof = bad_frame
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .unwrap();
        bad_frame[sof + 9] = 7; // seven components
        let result = decode_jpeg(&bad_frame, size);
        assert!(matches!(result, Err(EmbedError::Decode(_))), "{result:?}");
        assert!(decode_jpeg(&good, size).is_ok());
        // The header reading and libjpeg-turbo must agree on the size.
        let e = decode_jpeg(&good, (320, 241)).unwrap_err();
        assert!(
            e.to_string().contains("where the header said 320x241"),
            "{e}"
        );
    }

    #[test]
    fn cmyk_converts_as_pillow_does() {
        // Stored inverted: 255 is no ink.
        assert_eq!(pillow_cmyk_to_rgb([255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(pillow_cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(pillow_cmyk_to_rgb([0, 255, 255, 255]), [0, 255, 255]);
        assert_eq!(pillow_cmyk_to_rgb([127, 200, 255, 200]), [100, 157, 200]);
    }
}
