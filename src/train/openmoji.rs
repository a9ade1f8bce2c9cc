//! The `openmoji` data source of training recipes: the `train` split of a dataset directory made
//! by `omnibind data openmoji` (see [`crate::data`]), read through its `manifest.jsonl`.
//!
//! Every input goes through the preprocessing the server applies at inference
//! ([`crate::embed::preprocess`] with the model's geometry, as `ImageBindEncoder` calls it), so
//! that training and serving agree:
//! - stage 1 pairs each image with one of its captions, drawn at random per epoch and tokenised
//!   with the CLIP tokenizer. The tag captions ("a picture of happy") are shared by many emoji
//!   and make a noisy target, so a share of the draws (`annotation_captions`, 0.75 by default)
//!   is taken from the captions that contain the annotation only. Images are decoded once and kept as RGB of at most twice the
//!   model's image size; each epoch takes a seeded random square crop of 80-100 % of the area
//!   (position at random) and a small colour jitter (brightness, contrast and saturation, each
//!   by a factor in 0.9-1.1) before the server's resize and normalisation ([`Augment`]);
//! - stage 2 pairs each image with the tower's input as the manifest pairs them: one of the
//!   emoji's audio clips or IMU traces (drawn at random per epoch), its depth map or its
//!   thermal image. Emoji without such an input (IMU is for motion emoji only) are left out of
//!   that tower's stage. The images are preprocessed without augmentation, exactly as served,
//!   and the frozen image tower embeds them once per stage ([`BindPairs`]).
//!
//! All preprocessed inputs are cached in memory (f32) for the stage that uses them; the log
//! states the size of each cache.
//!
//! Labels (for `negatives = "grouped"`) are the emoji subgroups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::trainer::{Batch, Paired};
use crate::data::{read_manifest, ManifestItem, Split};
use crate::embed::imagebind::encoder::{audio_preprocess_config, image_preprocess_config};
use crate::embed::imagebind::model::Tower;
use crate::embed::imagebind::ImageBindConfig;
use crate::embed::preprocess::image::{
    decode_rgb_with, normalize, pil_resize, resize_and_crop, Filter, ImagePreprocessConfig,
};
use crate::embed::preprocess::text::TextTokenizer;
use crate::embed::preprocess::{audio, depth, imu, thermal};

/// A source of training pairs: `len` items, a label each, and the pairs of any items as drawn
/// for an epoch (the random choices depend on the seed, the epoch and the item only).
pub trait PairSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn labels(&self) -> &[u64];
    fn batch(&self, indices: &[usize], epoch: usize) -> candle_core::Result<Batch>;
}

/// Fixed pairs (the synthetic source): item `i` is row `i` of the pool in every epoch.
pub struct FixedPairs {
    pub pool: Batch,
    pub labels: Vec<u64>,
}

impl PairSource for FixedPairs {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn labels(&self) -> &[u64] {
        &self.labels
    }

    fn batch(&self, indices: &[usize], _epoch: usize) -> candle_core::Result<Batch> {
        self.pool.select(indices)
    }
}

/// A seeded RNG for one item of one epoch (splitmix64 of the three).
fn item_rng(seed: u64, epoch: usize, item: usize) -> StdRng {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (item as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Stage-1 image augmentation: a random square crop of `min_scale..=1` of the area, then each
/// of brightness, contrast and saturation scaled by a factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub min_scale: f64,
    pub jitter: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_scale: 0.8,
            jitter: 0.1,
        }
    }
}

impl Augment {
    /// `[3, s, s]` u8 pixels of the augmented image, through the server's resize and crop.
    fn apply(
        &self,
        rgb: &RgbImage,
        cfg: &ImagePreprocessConfig,
        rng: &mut StdRng,
    ) -> candle_core::Result<Vec<u8>> {
        let (w, h) = rgb.dimensions();
        let side = w.min(h) as f64;
        let scale = rng.random_range(self.min_scale.min(1.0)..=1.0);
        let s = ((side * scale.sqrt()).round() as u32).clamp(1, w.min(h));
        let x = rng.random_range(0..=w - s);
        let y = rng.random_range(0..=h - s);
        let crop = image::imageops::crop_imm(rgb, x, y, s, s).to_image();
        let mut px =
            resize_and_crop(&crop, cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if self.jitter > 0.0 {
            let j = self.jitter;
            let mut f = || rng.random_range(1.0 - j..=1.0 + j);
            let (b, c, sat) = (f(), f(), f());
            jitter(&mut px, b, c, sat);
        }
        Ok(px)
    }
}

/// Brightness, contrast (about the mean grey) and saturation (about each pixel's grey) of
/// `[3, h, w]` u8 pixels, in place.
fn jitter(px: &mut [u8], brightness: f32, contrast: f32, saturation: f32) {
    let plane = px.len() / 3;
    let grey = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
    let mut v: Vec<[f32; 3]> = (0..plane)
        .map(|i| {
            [
                px[i] as f32 * brightness,
                px[plane + i] as f32 * brightness,
                px[2 * plane + i] as f32 * brightness,
            ]
        })
        .collect();
    let mean = v.iter().map(|p| grey(p[0], p[1], p[2])).sum::<f32>() / plane.max(1) as f32;
    for p in &mut v {
        let l = grey(p[0], p[1], p[2]);
        for x in p.iter_mut() {
            let s = l + saturation * (*x - l);
            *x = mean + contrast * (s - mean);
        }
    }
    for (i, p) in v.iter().enumerate() {
        for (c, x) in p.iter().enumerate() {
            px[c * plane + i] = x.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Per item, the candidate inputs of a stage-2 tower (each preprocessed, flat).
pub type Candidates = Vec<Vec<Vec<f32>>>;

/// The train split of an OpenMoji dataset directory.
pub struct OpenMoji {
    dir: PathBuf,
    items: Vec<ManifestItem>,
    labels: Vec<u64>,
    config: ImageBindConfig,
    image_cfg: ImagePreprocessConfig,
}

fn bytes(dir: &Path, rel: &str) -> anyhow::Result<Vec<u8>> {
    let p = dir.join(rel);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl OpenMoji {
    /// Reads `manifest.jsonl` of `dir`; keeps the `train` items.
    pub fn open(dir: &Path, config: &ImageBindConfig) -> anyhow::Result<Self> {
        let all = read_manifest(&dir.join("manifest.jsonl"))?;
        let items: Vec<ManifestItem> = all
            .into_iter()
            .filter(|i| i.split == Split::Train)
            .collect();
        if items.len() < 2 {
            bail!("{} has fewer than two train items", dir.display());
        }
        let mut ids: BTreeMap<&str, u64> = BTreeMap::new();
        for i in &items {
            let n = ids.len() as u64;
            ids.entry(i.subgroup.as_str()).or_insert(n);
        }
        let labels = items.iter().map(|i| ids[i.subgroup.as_str()]).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            items,
            labels,
            config: config.clone(),
            image_cfg: image_preprocess_config(config),
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[ManifestItem] {
        &self.items
    }

    /// Subgroup index of each train item.
    pub fn labels(&self) -> &[u64] {
        &self.labels
    }

    /// Stage-1 pairs: images decoded once (RGB, at most twice the model's image size) with
    /// every caption tokenised; `augment` of `None` feeds the plain served preprocessing. Each
    /// epoch draws an item's caption from those containing its annotation with probability
    /// `annotation_share`, and from all its captions otherwise.
    pub fn image_text(
        &self,
        tokenizer: &TextTokenizer,
        augment: Option<Augment>,
        annotation_share: f64,
        seed: u64,
        device: &Device,
        log: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ImageTextPairs> {
        let cache = 2 * self.config.inputs.image_size as u32;
        let images: Vec<RgbImage> = self
            .items
            .par_iter()
            .map(|i| {
                let rgb = decode_rgb_with(&bytes(&self.dir, &i.image)?, self.image_cfg.alpha)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", i.image))?;
                let (w, h) = rgb.dimensions();
                Ok(if w.min(h) > cache {
                    let (nw, nh) = (w * cache / w.min(h), h * cache / w.min(h));
                    pil_resize(&rgb, nw, nh, Filter::Bicubic)
                } else {
                    rgb
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut captions = Vec::with_capacity(self.items.len());
        let mut annotated = Vec::with_capacity(self.items.len());
        for i in &self.items {
            if i.captions.is_empty() {
                bail!("{} has no caption", i.hexcode);
            }
            let (mut texts, rest): (Vec<&String>, Vec<&String>) = i
                .captions
                .iter()
                .partition(|c| !i.annotation.is_empty() && c.contains(&i.annotation));
            annotated.push(texts.len());
            texts.extend(rest);
            let mut c = Vec::with_capacity(texts.len());
            for t in texts {
                let ids = tokenizer.encode(t)?;
                let eos = tokenizer.pool_position(&ids);
                c.push((ids, eos));
            }
            captions.push(c);
        }
        let px: usize = images.iter().map(|i| i.as_raw().len()).sum();
        let tok: usize = captions.iter().flatten().map(|c| 4 * c.0.len() + 8).sum();
        log(&format!(
            "openmoji stage 1: {} train pairs, {} subgroups; cached {:.1} MiB of RGB images \
             and {:.1} MiB of tokens",
            self.len(),
            self.labels.iter().max().map_or(0, |m| m + 1),
            mib(px),
            mib(tok)
        ));
        Ok(ImageTextPairs {
            images,
            captions,
            annotated,
            annotation_share: annotation_share.clamp(0.0, 1.0),
            labels: self.labels.clone(),
            augment,
            cfg: self.image_cfg.clone(),
            seed,
            device: device.clone(),
        })
    }

    /// Items that have an input for `tower`.
    pub fn bind_items(&self, tower: Tower) -> Vec<usize> {
        (0..self.len())
            .filter(|&k| match tower {
                Tower::Audio => !self.items[k].audio.is_empty(),
                Tower::Imu => !self.items[k].imu.is_empty(),
                _ => true,
            })
            .collect()
    }

    /// `[n, 3, s, s]` served-preprocessed images of the given items.
    pub fn served_images(&self, items: &[usize], device: &Device) -> anyhow::Result<Tensor> {
        let s = self.config.inputs.image_size;
        let data: Vec<Vec<f32>> = items
            .par_iter()
            .map(|&k| {
                let rgb = decode_rgb_with(
                    &bytes(&self.dir, &self.items[k].image)?,
                    self.image_cfg.alpha,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", self.items[k].image))?;
                let px = resize_and_crop(&rgb, &self.image_cfg)?;
                Ok(normalize(&px, &self.image_cfg))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Tensor::from_vec(
            data.concat(),
            (items.len(), 3, s, s),
            device,
        )?)
    }

    /// Stage-2 inputs of `tower` for the given items: per item every candidate input (each
    /// audio clip of each file, each IMU trace, the one depth or thermal map), preprocessed as
    /// the server does; and the shape of one input.
    pub fn bind_inputs(
        &self,
        tower: Tower,
        items: &[usize],
        log: &mut dyn FnMut(&str),
    ) -> anyhow::Result<(Candidates, Vec<usize>)> {
        let i = &self.config.inputs;
        let s = i.image_size;
        let (shape, audio_setup) = match tower {
            Tower::Audio => {
                let cfg = audio_preprocess_config(&self.config);
                let fb = audio::Fbank::new(audio::SAMPLE_RATE, cfg.num_mel_bins)?;
                (
                    vec![1, i.audio_num_mel_bins, i.audio_target_len],
                    Some((cfg, fb)),
                )
            }
            Tower::Depth | Tower::Thermal => (vec![1, s, s], None),
            Tower::Imu => {
                if i.imu_channels != imu::CHANNELS || i.imu_len != imu::LEN {
                    bail!(
                        "IMU traces are preprocessed to [{}, {}]: the model's inputs must match",
                        imu::CHANNELS,
                        imu::LEN
                    );
                }
                (vec![imu::CHANNELS, imu::LEN], None)
            }
            other => bail!("stage 2 does not bind {other:?}"),
        };
        let per: usize = shape.iter().product();
        let inputs: Candidates = items
            .par_iter()
            .map(|&k| {
                let item = &self.items[k];
                let err = |p: &str, e: crate::embed::EmbedError| anyhow::anyhow!("{p}: {e}");
                Ok(match tower {
                    Tower::Audio => {
                        let (cfg, fb) = audio_setup.as_ref().expect("audio set up");
                        let mut clips: Vec<Vec<f32>> = Vec::new();
                        for f in &item.audio {
                            let x = audio::preprocess(&bytes(&self.dir, &f.path)?, fb, cfg)
                                .map_err(|e| err(&f.path, e))?;
                            for c in x.chunks(per) {
                                // Short files give identical clips: keep one of each.
                                if !clips.iter().any(|d| d.as_slice() == c) {
                                    clips.push(c.to_vec());
                                }
                            }
                        }
                        clips
                    }
                    Tower::Depth => {
                        vec![
                            depth::preprocess(&bytes(&self.dir, &item.depth)?, &i.depth, s)
                                .map_err(|e| err(&item.depth, e))?,
                        ]
                    }
                    Tower::Thermal => {
                        vec![thermal::preprocess(&bytes(&self.dir, &item.thermal)?, s)
                            .map_err(|e| err(&item.thermal, e))?]
                    }
                    _ => item
                        .imu
                        .iter()
                        .map(|p| imu::preprocess(&bytes(&self.dir, p)?).map_err(|e| err(p, e)))
                        .collect::<anyhow::Result<_>>()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let count: usize = inputs.iter().map(Vec::len).sum();
        log(&format!(
            "openmoji stage 2 ({}): {} pairs, {count} inputs cached ({:.1} MiB)",
            tower.keys().name,
            items.len(),
            mib(4 * per * count)
        ));
        Ok((inputs, shape))
    }
}

/// Stage-1 pairs of an OpenMoji dataset.
pub struct ImageTextPairs {
    images: Vec<RgbImage>,
    /// Per item, each caption's token ids and pooling position, the annotation's captions
    /// first.
    captions: Vec<Vec<(Vec<u32>, usize)>>,
    /// Per item, how many of its captions contain the annotation.
    annotated: Vec<usize>,
    annotation_share: f64,
    labels: Vec<u64>,
    augment: Option<Augment>,
    cfg: ImagePreprocessConfig,
    seed: u64,
    device: Device,
}

impl PairSource for ImageTextPairs {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn labels(&self) -> &[u64] {
        &self.labels
    }

    /// Each item's image (augmented when set) with one of its captions; the token rows are
    /// padded to the batch's longest with their end-of-text token (the text tower is causal, so
    /// padding after the pooled position changes nothing).
    fn batch(&self, indices: &[usize], epoch: usize) -> candle_core::Result<Batch> {
        let rows: Vec<(Vec<f32>, usize)> = indices
            .par_iter()
            .map(|&k| {
                let mut rng = item_rng(self.seed, epoch, k);
                let (all, annotated) = (self.captions[k].len(), self.annotated[k]);
                let caption = if annotated > 0 && rng.random_bool(self.annotation_share) {
                    rng.random_range(0..annotated)
                } else {
                    rng.random_range(0..all)
                };
                let px = match &self.augment {
                    Some(a) => a.apply(&self.images[k], &self.cfg, &mut rng)?,
                    None => resize_and_crop(&self.images[k], &self.cfg)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
                };
                Ok((normalize(&px, &self.cfg), caption))
            })
            .collect::<candle_core::Result<_>>()?;
        let seq = indices
            .iter()
            .zip(&rows)
            .map(|(&k, r)| self.captions[k][r.1].0.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = Vec::with_capacity(indices.len() * seq);
        let mut eos = Vec::with_capacity(indices.len());
        for (&k, r) in indices.iter().zip(&rows) {
            let (t, p) = &self.captions[k][r.1];
            ids.extend_from_slice(t);
            let pad = t.get(*p).copied().unwrap_or(0);
            ids.extend(std::iter::repeat_n(pad, seq - t.len()));
            eos.push(*p);
        }
        let (s, w) = self.cfg.output_size();
        let data: Vec<f32> = rows.into_iter().flat_map(|r| r.0).collect();
        Ok(Batch {
            images: Tensor::from_vec(
                data,
                (indices.len(), 3, s as usize, w as usize),
                &self.device,
            )?,
            paired: Paired::Text {
                ids: Tensor::from_vec(ids, (indices.len(), seq), &self.device)?,
                eos,
            },
        })
    }
}

/// Stage-2 pairs: the frozen image tower's head outputs (computed once), or the images
/// themselves when stage 2 trains the image tower, with one of each item's inputs, drawn per
/// epoch.
pub struct BindPairs {
    /// `[n, out_dim]` head outputs or `[n, 3, h, w]` images, row `k` for item `k`.
    pub images: Tensor,
    pub inputs: Candidates,
    pub shape: Vec<usize>,
    pub labels: Vec<u64>,
    pub seed: u64,
}

impl PairSource for BindPairs {
    fn len(&self) -> usize {
        self.inputs.len()
    }

    fn labels(&self) -> &[u64] {
        &self.labels
    }

    fn batch(&self, indices: &[usize], epoch: usize) -> candle_core::Result<Batch> {
        let per: usize = self.shape.iter().product();
        let mut data = Vec::with_capacity(indices.len() * per);
        for &k in indices {
            let mut rng = item_rng(self.seed, epoch, k);
            let c = &self.inputs[k];
            data.extend_from_slice(&c[rng.random_range(0..c.len())]);
        }
        let mut dims = vec![indices.len()];
        dims.extend_from_slice(&self.shape);
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let device = self.images.device();
        Ok(Batch {
            images: self
                .images
                .index_select(&Tensor::new(idx.as_slice(), device)?, 0)?,
            paired: Paired::Other(Tensor::from_vec(data, dims, device)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_of_ones_is_the_identity_and_item_rngs_differ() {
        let mut px: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
        let before = px.clone();
        jitter(&mut px, 1.0, 1.0, 1.0);
        assert_eq!(px, before);
        jitter(&mut px, 1.1, 1.0, 1.0);
        assert!(px.iter().zip(&before).all(|(a, b)| *a >= *b));
        let draw = |e, k| item_rng(1, e, k).random::<u64>();
        assert_eq!(draw(0, 0), draw(0, 0));
        assert_ne!(draw(0, 0), draw(1, 0));
        assert_ne!(draw(0, 0), draw(0, 1));
    }
}
