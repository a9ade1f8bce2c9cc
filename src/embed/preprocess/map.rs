//! Single-channel float maps (depth, thermal): torchvision's `Resize(size)` on a float tensor
//! (shorter side to `size`, bilinear with antialiasing, as `torch.nn.functional.interpolate(...,
//! mode="bilinear", antialias=True, align_corners=False)` computes it) and `CenterCrop(size)`.
//!
//! The resampler follows PyTorch's separable antialiased kernel: for each output pixel a
//! triangle filter whose support grows with the downscaling factor, weights normalised to sum
//! to one, computed in f32 like PyTorch does for f32 tensors; the width pass runs first.

use super::image::{resized_dims, CropOffset};
use crate::embed::EmbedError;

/// A row-major `height x width` map.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl Map {
    pub fn new(data: Vec<f32>, height: usize, width: usize) -> Self {
        debug_assert_eq!(data.len(), height * width);
        Self {
            data,
            height,
            width,
        }
    }
}

/// Per output index: the first contributing input index and the normalised weights.
fn weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f32 / output as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Antialiased bilinear resize to `out_h x out_w`.
pub fn resize_bilinear_aa(map: &Map, out_h: usize, out_w: usize) -> Map {
    if (out_h, out_w) == (map.height, map.width) {
        return map.clone();
    }
    let (h, w) = (map.height, map.width);
    let wx = weights(w, out_w);
    let mut tmp = vec![0f32; h * out_w];
    for y in 0..h {
        let row = &map.data[y * w..(y + 1) * w];
        for (x, (start, ws)) in wx.iter().enumerate() {
            tmp[y * out_w + x] = ws.iter().zip(&row[*start..]).map(|(a, b)| a * b).sum();
        }
    }
    let wy = weights(h, out_h);
    let mut out = vec![0f32; out_h * out_w];
    for (y, (start, ws)) in wy.iter().enumerate() {
        for x in 0..out_w {
            out[y * out_w + x] = ws
                .iter()
                .enumerate()
                .map(|(k, a)| a * tmp[(start + k) * out_w + x])
                .sum();
        }
    }
    Map::new(out, out_h, out_w)
}

/// Smallest accepted side of a map.
pub const MIN_SIDE: usize = 16;
/// Largest accepted side of a map: the image decoder's limit.
pub const MAX_SIDE: usize = super::image::MAX_DIMENSION as usize;

/// Most bytes [`resize_and_centre_crop`] allocates for a `h x w` map: the width pass's rows,
/// the resized map and the filter weights (the map itself is not counted).
pub fn resize_cost(h: u64, w: u64, size: u64) -> u64 {
    if h == 0 || w == 0 {
        return 0;
    }
    let (nw, nh) = resized_dims(
        w.min(u32::MAX as u64) as u32,
        h.min(u32::MAX as u64) as u32,
        size.min(u32::MAX as u64) as u32,
    );
    let (nw, nh) = (nw as u64, nh as u64);
    // Per output index a vector of about 2 * scale + 2 weights, and its header.
    let weights = |input: u64, output: u64| output * (32 + 4 * (2 * input.div_ceil(output) + 2));
    4 * (h * nw + nh * nw + size * size) + weights(w, nw) + weights(h, nh)
}

/// torchvision `Resize(size)` then `CenterCrop(size)`: a `size x size` map.
pub fn resize_and_centre_crop(map: &Map, size: usize) -> Result<Map, EmbedError> {
    let (h, w) = (map.height, map.width);
    if h.min(w) < MIN_SIDE || h.max(w) > MAX_SIDE {
        return Err(EmbedError::InvalidInput(format!(
            "map of {w}x{h} pixels: each side must be between {MIN_SIDE} and {MAX_SIDE}"
        )));
    }
    let (nw, nh) = resized_dims(w as u32, h as u32, size as u32);
    let resized = resize_bilinear_aa(map, nh as usize, nw as usize);
    let top = CropOffset::RoundHalfEven.offset(nh as i64 - size as i64) as usize;
    let left = CropOffset::RoundHalfEven.offset(nw as i64 - size as i64) as usize;
    let data = (top..top + size)
        .flat_map(|y| {
            let start = y * resized.width + left;
            resized.data[start..start + size].iter().copied()
        })
        .collect();
    Ok(Map::new(data, size, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_constant_and_downscale() {
        let m = Map::new((0..24 * 20).map(|v| v as f32).collect(), 20, 24);
        assert_eq!(resize_bilinear_aa(&m, 20, 24), m);
        let c = Map::new(vec![3.5; 40 * 30], 30, 40);
        let r = resize_bilinear_aa(&c, 17, 23);
        assert!(r.data.iter().all(|v| (v - 3.5).abs() < 1e-5));
        // Halving: a triangle of half-width 2 around each output centre, clipped at the edges
        // (torch.nn.functional.interpolate gives [2.8571, 9.1429]).
        let row = Map::new(vec![0.0, 4.0, 8.0, 12.0], 1, 4);
        let half = resize_bilinear_aa(&row, 1, 2);
        let want = [5.0 / 1.75, 16.0 / 1.75];
        assert!(
            half.data
                .iter()
                .zip(want)
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{half:?}"
        );
    }

    #[test]
    fn refuses_tiny_maps() {
        let m = Map::new(vec![1.0], 1, 1);
        let e = resize_and_centre_crop(&m, 224).unwrap_err();
        assert!(e.to_string().contains("1x1"), "{e}");
    }
}
