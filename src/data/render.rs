//! Rendering an emoji SVG (resvg) and the synthetic depth and thermal maps derived from it.
//!
//! - Image: the SVG scaled to fit a `size`×`size` square, centred, composited on white,
//!   8-bit RGB PNG.
//! - Depth (synthetic, not a measurement): the emoji as a relief standing in front of a flat
//!   background plane. Height is the chamfer (3-4) distance transform of the alpha mask,
//!   normalised by its maximum and shaped as `sqrt` (a rounded dome), up to
//!   [`RELIEF_MM`] towards the camera from the plane at [`PLANE_MM`]; seeded Gaussian noise of
//!   [`DEPTH_NOISE_MM`] is added. Saved as a 16-bit greyscale PNG in millimetres, the format
//!   the depth input takes (`embed::preprocess::depth`).
//! - Thermal (synthetic): "heat" = alpha × (0.35 + 0.65 × warmth), warmth being
//!   `0.6 r + 0.3 g + 0.1 b` of the un-premultiplied colour, on a background of 0.12; box
//!   downsampled 4×, blurred (Gaussian, σ = 1 low-resolution pixel), seeded Gaussian noise
//!   (σ = 0.02) added, upsampled bilinearly to `size` and saved as an 8-bit greyscale PNG.

use anyhow::{anyhow, Result};
use image::{GrayImage, ImageBuffer, Luma, RgbImage};

use super::rng::Rng;

/// Distance of the background plane from the camera, mm.
pub const PLANE_MM: f32 = 1200.0;
/// Height of the relief's top above the plane, mm.
pub const RELIEF_MM: f32 = 400.0;
/// Standard deviation of the depth noise, mm.
pub const DEPTH_NOISE_MM: f64 = 2.0;

/// An RGBA rendering, straight (not premultiplied) alpha, row-major.
#[derive(Debug, Clone)]
pub struct Rendering {
    pub size: usize,
    pub rgba: Vec<[u8; 4]>,
}

/// Renders SVG bytes at `size`×`size` on a transparent background.
pub fn render_svg(svg: &[u8], size: u32) -> Result<Rendering> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(svg, &usvg::Options::default())
        .map_err(|e| anyhow!("SVG does not parse: {e}"))?;
    let (w, h) = (tree.size().width(), tree.size().height());
    if !(w > 0.0 && h > 0.0) {
        return Err(anyhow!("SVG has an empty size"));
    }
    let mut pixmap = tiny_skia::Pixmap::new(size, size).ok_or_else(|| anyhow!("bad size"))?;
    let scale = size as f32 / w.max(h);
    let (dx, dy) = (
        (size as f32 - w * scale) / 2.0,
        (size as f32 - h * scale) / 2.0,
    );
    let transform = tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy);
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    let rgba = pixmap
        .pixels()
        .iter()
        .map(|p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue(), c.alpha()]
        })
        .collect();
    Ok(Rendering {
        size: size as usize,
        rgba,
    })
}

impl Rendering {
    /// Composited on white.
    pub fn on_white(&self) -> RgbImage {
        let s = self.size as u32;
        ImageBuffer::from_fn(s, s, |x, y| {
            let [r, g, b, a] = self.rgba[y as usize * self.size + x as usize];
            let a = a as u32;
            let mix = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
            image::Rgb([mix(r), mix(g), mix(b)])
        })
    }

    fn alpha(&self) -> Vec<f32> {
        self.rgba.iter().map(|p| p[3] as f32 / 255.0).collect()
    }
}

/// Chamfer (3-4) distance, in pixels, from each pixel inside `mask` to the nearest pixel
/// outside it (0 outside). The image border counts as outside.
pub fn distance_transform(mask: &[bool], size: usize) -> Vec<f32> {
    const BIG: u32 = u32::MAX / 4;
    let mut d: Vec<u32> = mask.iter().map(|&m| if m { BIG } else { 0 }).collect();
    let at = |x: isize, y: isize, d: &Vec<u32>| -> u32 {
        if x < 0 || y < 0 || x >= size as isize || y >= size as isize {
            0
        } else {
            d[y as usize * size + x as usize]
        }
    };
    for y in 0..size as isize {
        for x in 0..size as isize {
            let i = y as usize * size + x as usize;
            if d[i] == 0 {
                continue;
            }
            let v = [
                at(x - 1, y, &d) + 3,
                at(x, y - 1, &d) + 3,
                at(x - 1, y - 1, &d) + 4,
                at(x + 1, y - 1, &d) + 4,
            ];
            d[i] = d[i].min(v.into_iter().min().unwrap());
        }
    }
    for y in (0..size as isize).rev() {
        for x in (0..size as isize).rev() {
            let i = y as usize * size + x as usize;
            if d[i] == 0 {
                continue;
            }
            let v = [
                at(x + 1, y, &d) + 3,
                at(x, y + 1, &d) + 3,
                at(x + 1, y + 1, &d) + 4,
                at(x - 1, y + 1, &d) + 4,
            ];
            d[i] = d[i].min(v.into_iter().min().unwrap());
        }
    }
    d.into_iter().map(|v| v as f32 / 3.0).collect()
}

/// The synthetic depth map in millimetres (see the module header).
pub fn depth_mm(r: &Rendering, rng: &mut Rng) -> ImageBuffer<Luma<u16>, Vec<u16>> {
    let mask: Vec<bool> = r.rgba.iter().map(|p| p[3] >= 128).collect();
    let dist = distance_transform(&mask, r.size);
    let max = dist.iter().cloned().fold(0.0f32, f32::max).max(1.0);
    let s = r.size as u32;
    let data: Vec<u16> = dist
        .iter()
        .map(|&d| {
            let h = RELIEF_MM * (d / max).sqrt();
            let mm = PLANE_MM - h + (rng.normal() * DEPTH_NOISE_MM) as f32;
            mm.round().clamp(1.0, 65535.0) as u16
        })
        .collect();
    ImageBuffer::from_raw(s, s, data).expect("size matches")
}

/// The synthetic thermal image (see the module header).
pub fn thermal(r: &Rendering, rng: &mut Rng) -> GrayImage {
    const BACKGROUND: f32 = 0.12;
    let n = r.size;
    let alpha = r.alpha();
    let heat: Vec<f32> = r
        .rgba
        .iter()
        .zip(&alpha)
        .map(|(p, &a)| {
            let warmth = (0.6 * p[0] as f32 + 0.3 * p[1] as f32 + 0.1 * p[2] as f32) / 255.0;
            BACKGROUND * (1.0 - a) + a * (0.35 + 0.65 * warmth)
        })
        .collect();
    // Downsample 4x (box).
    let f = 4usize;
    let m = n.div_ceil(f);
    let mut low = vec![0f32; m * m];
    let mut cnt = vec![0f32; m * m];
    for y in 0..n {
        for x in 0..n {
            let j = (y / f) * m + x / f;
            low[j] += heat[y * n + x];
            cnt[j] += 1.0;
        }
    }
    for (v, c) in low.iter_mut().zip(&cnt) {
        *v /= c;
    }
    // Gaussian blur, sigma 1 (separable, 5 taps, clamped edges).
    let k = [0.054f32, 0.244, 0.403, 0.244, 0.054];
    let blur = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; m * m];
        for y in 0..m {
            for x in 0..m {
                let mut acc = 0.0;
                for (t, w) in k.iter().enumerate() {
                    let o = t as isize - 2;
                    let (xx, yy) = if horizontal {
                        ((x as isize + o).clamp(0, m as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + o).clamp(0, m as isize - 1) as usize)
                    };
                    acc += w * src[yy * m + xx];
                }
                out[y * m + x] = acc;
            }
        }
        out
    };
    let mut low = blur(&blur(&low, true), false);
    for v in &mut low {
        *v += (rng.normal() * 0.02) as f32;
    }
    // Bilinear upsampling back to n (pixel centres aligned).
    let s = n as u32;
    ImageBuffer::from_fn(s, s, |x, y| {
        let fx = ((x as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, (m - 1) as f32);
        let fy = ((y as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, (m - 1) as f32);
        let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(m - 1), (y0 + 1).min(m - 1));
        let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
        let v = low[y0 * m + x0] * (1.0 - tx) * (1.0 - ty)
            + low[y0 * m + x1] * tx * (1.0 - ty)
            + low[y1 * m + x0] * (1.0 - tx) * ty
            + low[y1 * m + x1] * tx * ty;
        Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    })
}

/// PNG bytes of any `image` buffer.
pub fn png<P, C>(img: &ImageBuffer<P, C>) -> Result<Vec<u8>>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIRCLE: &str = r##"<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" cy="36" r="20" fill="#EA5A47"/></svg>"##;

    #[test]
    fn renders_shape_on_white() {
        let r = render_svg(CIRCLE.as_bytes(), 64).unwrap();
        let img = r.on_white();
        assert_eq!(img.dimensions(), (64, 64));
        let centre = img.get_pixel(32, 32).0;
        assert!(centre[0] > 200 && centre[1] < 120, "{centre:?}");
        assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255]);
        assert!(render_svg(b"<svg", 64).is_err());
        assert!(render_svg(b"not svg at all", 64).is_err());
    }

    #[test]
    fn distance_transform_peaks_inside() {
        let n = 9;
        let mask: Vec<bool> = (0..n * n)
            .map(|i| (2..7).contains(&(i % n)) && (2..7).contains(&(i / n)))
            .collect();
        let d = distance_transform(&mask, n);
        assert_eq!(d[0], 0.0);
        assert_eq!(d[2 * n + 2], 1.0);
        assert_eq!(d[4 * n + 4], 3.0);
    }

    #[test]
    fn depth_is_nearer_inside_and_decodes() {
        let r = render_svg(CIRCLE.as_bytes(), 96).unwrap();
        let d = depth_mm(&r, &mut Rng::new(1));
        let inside = d.get_pixel(48, 48).0[0];
        let outside = d.get_pixel(2, 2).0[0];
        assert!(inside + 300 < outside, "{inside} {outside}");
        assert!((outside as f32 - PLANE_MM).abs() < 20.0);
        let bytes = png(&d).unwrap();
        let map = crate::embed::preprocess::depth::decode_depth(&bytes).unwrap();
        assert_eq!((map.height, map.width), (96, 96));
        let m = map.data[48 * 96 + 48];
        assert!((m - inside as f32 / 1000.0).abs() < 1e-6);
        // Seeded: same seed, same map; another seed, other noise.
        assert_eq!(d, depth_mm(&r, &mut Rng::new(1)));
        assert_ne!(d, depth_mm(&r, &mut Rng::new(2)));
    }

    #[test]
    fn thermal_is_warm_on_the_shape() {
        let r = render_svg(CIRCLE.as_bytes(), 96).unwrap();
        let t = thermal(&r, &mut Rng::new(1));
        assert_eq!(t.dimensions(), (96, 96));
        let inside = t.get_pixel(48, 48).0[0] as i32;
        let outside = t.get_pixel(3, 3).0[0] as i32;
        assert!(inside > outside + 80, "{inside} {outside}");
        let bytes = png(&t).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(matches!(img, image::DynamicImage::ImageLuma8(_)));
        assert_eq!(t, thermal(&r, &mut Rng::new(1)));
    }
}
