//! [`ImageBindEncoder`]: an ImageBind model directory served through the [`Encoder`] trait.
//!
//! A directory holds `config.json` (`"model_type": "imagebind"`, see [`ImageBindConfig`]), the
//! weights (`model.safetensors`, or the official state dict as `imagebind_huge.pth` or any single
//! `*.pth`) and, for text, the CLIP `tokenizer.json`. Only the towers of the modalities the
//! deployment lists are loaded. Each modality's inputs run in one forward pass per `max_batch`;
//! vectors come back re-normalised (the official post-processors scale by a per-modality logit
//! scale and average clips, so their outputs are not unit vectors).

use std::path::{Path, PathBuf};

use crate::embed::{embed_in_parallel, BatchSlots, DecodeBudget, UploadBudget};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::ImageBindConfig;
use super::convert::read_pth;
use super::model::{ImageBindModel, Tower};
use super::IMAGEBIND_LICENSE;
use crate::embed::builtin::BuiltinModel;
use crate::embed::device::{device_name, dtype_name};
use crate::embed::layers::forward_in_chunks;
use crate::embed::preprocess::audio::{self, AudioPreprocessConfig, Fbank};
use crate::embed::preprocess::image::{
    preprocess_within as preprocess_image_within, Alpha, CropOffset, ImagePreprocessConfig,
};
use crate::embed::preprocess::text::TextTokenizer;
use crate::embed::preprocess::{depth, imu, thermal, video, PREPROCESS_VERSION};
use crate::embed::registry::{
    card_license, read_to_string, sha256_bytes, sha256_files, var_builder, ModelSpec,
};
use crate::embed::{EmbedError, Encoder, Input, Media, Modality, ModelInfo};

/// A loaded ImageBind model.
pub struct ImageBindEncoder {
    info: ModelInfo,
    model: ImageBindModel,
    tokenizer: Option<TextTokenizer>,
    image_cfg: ImagePreprocessConfig,
    fbank: Option<Fbank>,
    audio_cfg: AudioPreprocessConfig,
    device: Device,
    dtype: DType,
    max_batch: usize,
}

/// The weight file of an ImageBind directory.
pub fn imagebind_weights(dir: &Path) -> Result<PathBuf, EmbedError> {
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    let official = dir.join("imagebind_huge.pth");
    if official.is_file() {
        return Ok(official);
    }
    let pths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EmbedError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    match pths.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(EmbedError::ModelNotFound(format!(
            "{} holds no model.safetensors or .pth checkpoint",
            dir.display()
        ))),
        _ => Err(EmbedError::ModelNotFound(format!(
            "{} holds several .pth files; keep one",
            dir.display()
        ))),
    }
}

/// The image preprocessing of an ImageBind model (also what training feeds it): the official
/// `load_and_transform_vision_data`, PIL `convert("RGB")` (alpha dropped), torchvision Resize
/// (Pillow bicubic) and CenterCrop (offsets rounded) to `inputs.image_size`.
pub fn image_preprocess_config(config: &ImageBindConfig) -> ImagePreprocessConfig {
    ImagePreprocessConfig {
        alpha: Alpha::Drop,
        crop_offset: CropOffset::RoundHalfEven,
        ..ImagePreprocessConfig::clip(config.inputs.image_size as u32)
    }
}

/// The audio preprocessing of an ImageBind model: the official clips with the model's
/// filterbank geometry.
pub fn audio_preprocess_config(config: &ImageBindConfig) -> AudioPreprocessConfig {
    AudioPreprocessConfig {
        num_mel_bins: config.inputs.audio_num_mel_bins,
        target_len: config.inputs.audio_target_len,
        clip_secs: config.inputs.audio_clip_secs,
        clips: config.inputs.audio_clips,
    }
}

/// The towers an ImageBind deployment loads: the modalities it asked for, checked against
/// what the configuration has.
struct TowerPlan {
    wanted: Vec<Modality>,
    towers: Vec<Tower>,
}

impl TowerPlan {
    fn new(config: &ImageBindConfig, spec: &ModelSpec) -> Result<Self, EmbedError> {
        let mut available = config.modalities();
        // The video pipeline makes clips of 2 frames (the official vision input), cropped to
        // the model's image size.
        let video_fits = config.inputs.video_frames == video::FRAMES_PER_CLIP;
        if !video_fits {
            available.retain(|m| *m != Modality::Video);
        }
        let wanted = spec.modalities.clone().unwrap_or_else(|| available.clone());
        if let Some(m) = wanted.iter().find(|m| !available.contains(m)) {
            if *m == Modality::Video && !video_fits && config.vision.is_some() {
                return Err(EmbedError::Config(
                    "video input needs a vision tower of 2-frame clips".into(),
                ));
            }
            return Err(EmbedError::Config(format!(
                "this ImageBind model has no {m} tower"
            )));
        }
        let mut towers: Vec<Tower> = wanted.iter().map(|&m| Tower::of(m)).collect();
        towers.dedup();
        Ok(Self { wanted, towers })
    }

    fn has(&self, m: Modality) -> bool {
        self.wanted.contains(&m)
    }
}

/// What a loaded model is made of, wherever its files came from.
struct Parts<'a> {
    config: ImageBindConfig,
    plan: TowerPlan,
    vb: VarBuilder<'a>,
    tokenizer: Option<TextTokenizer>,
    license: String,
    weights_sha256: String,
}

impl ImageBindEncoder {
    /// Loads an ImageBind directory, only the towers of `spec.modalities` (all by default).
    pub fn load(
        dir: &Path,
        spec: &ModelSpec,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config = ImageBindConfig::from_json(&read_to_string(&config_path)?)
            .map_err(|e| EmbedError::Config(format!("{}: {e}", config_path.display())))?;
        let plan = TowerPlan::new(&config, spec)?;
        let weights = imagebind_weights(dir)?;
        let vb = if weights.extension().is_some_and(|e| e == "pth") {
            // The official state dict: read through the one key mapping, wanted towers only.
            VarBuilder::from_tensors(read_pth(&weights, &plan.towers)?, dtype, device)
        } else {
            var_builder(std::slice::from_ref(&weights), dtype, device)?
        };
        let tokenizer = if plan.has(Modality::Text) {
            let path = dir.join("tokenizer.json");
            if !path.is_file() {
                return Err(EmbedError::ModelNotFound(format!(
                    "{} lacks tokenizer.json, which its text tower needs (copy the CLIP \
                     tokenizer.json there, or list the other modalities to load it without text)",
                    dir.display()
                )));
            }
            Some(
                TextTokenizer::from_file(&path, config.inputs.context_length)?
                    .with_cleaning(spec.text_cleaning.unwrap_or(config.inputs.text_cleaning)),
            )
        } else {
            None
        };
        let parts = Parts {
            license: card_license(dir).unwrap_or_else(|| IMAGEBIND_LICENSE.into()),
            weights_sha256: sha256_files(&[weights])?,
            config,
            plan,
            vb,
            tokenizer,
        };
        Self::assemble(parts, spec, device, dtype)
    }

    /// Loads a model embedded in the binary (see [`crate::embed::builtin`]).
    pub fn load_builtin(
        model: &'static BuiltinModel,
        spec: &ModelSpec,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EmbedError> {
        let config = ImageBindConfig::from_json(model.config_json)
            .map_err(|e| EmbedError::Config(format!("{}: config.json: {e}", model.reference())))?;
        let plan = TowerPlan::new(&config, spec)?;
        let vb = VarBuilder::from_slice_safetensors(model.weights, dtype, device)?;
        let tokenizer = if plan.has(Modality::Text) {
            Some(
                TextTokenizer::from_bytes(model.tokenizer_json, config.inputs.context_length)?
                    .with_cleaning(spec.text_cleaning.unwrap_or(config.inputs.text_cleaning)),
            )
        } else {
            None
        };
        let parts = Parts {
            license: model.license.into(),
            weights_sha256: sha256_bytes(model.weights),
            config,
            plan,
            vb,
            tokenizer,
        };
        Self::assemble(parts, spec, device, dtype)
    }

    fn assemble(
        parts: Parts<'_>,
        spec: &ModelSpec,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EmbedError> {
        let Parts {
            config,
            plan,
            vb,
            tokenizer,
            license,
            weights_sha256,
        } = parts;
        let model = ImageBindModel::load(vb, &config, &plan.towers)?;
        let fbank = if plan.has(Modality::Audio) {
            Some(Fbank::new(
                audio::SAMPLE_RATE,
                config.inputs.audio_num_mel_bins,
            )?)
        } else {
            None
        };
        let audio_cfg = audio_preprocess_config(&config);
        let mut modalities: Vec<Modality> =
            Modality::ALL.into_iter().filter(|m| plan.has(*m)).collect();
        modalities.dedup();
        let info = ModelInfo {
            name: spec.name.clone(),
            family: "imagebind".into(),
            modalities,
            dim: config.out_embed_dim,
            device: device_name(device),
            precision: dtype_name(dtype).into(),
            license,
            weights_sha256,
            preprocess_version: PREPROCESS_VERSION,
        };
        Ok(Self {
            info,
            model,
            tokenizer,
            image_cfg: image_preprocess_config(&config),
            fbank,
            audio_cfg,
            device: device.clone(),
            dtype,
            max_batch: spec.max_batch.max(1),
        })
    }

    pub fn model(&self) -> &ImageBindModel {
        &self.model
    }

    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Preprocesses one input of a tensor modality: the values and the number of clips.
    pub(crate) fn preprocess(&self, m: Modality, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        self.preprocess_within(m, bytes, &UploadBudget::default())
    }

    /// [`Self::preprocess`], the file's decode memory reserved in `budget` first.
    pub(crate) fn preprocess_within(
        &self,
        m: Modality,
        bytes: &[u8],
        budget: &UploadBudget,
    ) -> Result<Vec<f32>, EmbedError> {
        match m {
            Modality::Image => preprocess_image_within(bytes, &self.image_cfg, budget),
            Modality::Audio => {
                let fb = self
                    .fbank
                    .as_ref()
                    .ok_or_else(|| self.info.unsupported(m))?;
                audio::preprocess_within(bytes, fb, &self.audio_cfg, budget)
            }
            Modality::Depth => depth::preprocess_within(
                bytes,
                &self.model.config.inputs.depth,
                self.model.config.inputs.image_size,
                budget,
            ),
            Modality::Thermal => {
                thermal::preprocess_within(bytes, self.model.config.inputs.image_size, budget)
            }
            Modality::Imu => imu::preprocess(bytes),
            Modality::Video => {
                video::preprocess_within(bytes, self.model.config.inputs.image_size, budget)
            }
            other => Err(self.info.unsupported(other)),
        }
    }

    /// Shape of one clip of an input, and the clips per input.
    fn input_shape(&self, m: Modality) -> (Vec<usize>, usize) {
        let i = &self.model.config.inputs;
        match m {
            Modality::Image => (vec![3, i.image_size, i.image_size], 1),
            Modality::Audio => (
                vec![1, i.audio_num_mel_bins, i.audio_target_len],
                self.audio_cfg.clips,
            ),
            Modality::Video => (
                vec![3, video::FRAMES_PER_CLIP, i.image_size, i.image_size],
                video::CLIPS * video::CROPS,
            ),
            Modality::Depth | Modality::Thermal => (vec![1, i.image_size, i.image_size], 1),
            _ => (vec![i.imu_channels, i.imu_len], 1),
        }
    }

    /// Unit-norm embeddings `[n, dim]` of preprocessed inputs of one tensor modality.
    pub fn embed_preprocessed(&self, m: Modality, inputs: &[&[f32]]) -> Result<Tensor, EmbedError> {
        let tower = Tower::of(m);
        if self.model.tower(tower).is_none() || m == Modality::Text {
            return Err(self.info.unsupported(m));
        }
        let (shape, clips) = self.input_shape(m);
        let per = clips * shape.iter().product::<usize>();
        // A video is 15 clips of two frames: `max_batch` counts clips for it, not videos.
        let per_chunk = if m == Modality::Video {
            (self.max_batch / clips).max(1)
        } else {
            self.max_batch
        };
        forward_in_chunks(inputs, per_chunk, |chunk| {
            let mut data = Vec::with_capacity(chunk.len() * per);
            for x in chunk {
                if x.len() != per {
                    return Err(EmbedError::InvalidInput(format!(
                        "{m} input of {} values, expected {clips} clips of {shape:?}",
                        x.len()
                    )));
                }
                data.extend_from_slice(x);
            }
            // Clips are rows of their own: [n * clips, ...].
            let mut dims = vec![chunk.len() * clips];
            dims.extend_from_slice(&shape);
            let xs = Tensor::from_vec(data, dims, &self.device)?.to_dtype(self.dtype)?;
            Ok(self.model.forward(tower, &xs, clips)?)
        })
    }

    /// Unit-norm text embeddings `[n, dim]`.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Tensor, EmbedError> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| self.info.unsupported(Modality::Text))?;
        forward_in_chunks(texts, self.max_batch, |chunk| {
            let batch = tok.encode_batch(chunk)?;
            let ids = Tensor::from_vec(batch.ids, (batch.rows, batch.seq_len), &self.device)?;
            Ok(self.model.forward_text(&ids, &batch.eos_positions)?)
        })
    }
}

impl Encoder for ImageBindEncoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed_batch_within(
        &self,
        inputs: &[Input],
        budget: &DecodeBudget,
    ) -> Result<Vec<Result<Vec<f32>, EmbedError>>, EmbedError> {
        let mut out: BatchSlots = (0..inputs.len()).map(|_| None).collect();
        let mut texts = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match input {
                Input::Text(t) if self.tokenizer.is_some() => texts.push((i, t.as_str())),
                other if !self.info.modalities.contains(&other.modality()) => {
                    out[i] = Some(Err(self.info.unsupported(other.modality())))
                }
                _ => {}
            }
        }
        if !texts.is_empty() {
            let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
            let embs = self.embed_texts(&strs)?.to_vec2::<f32>()?;
            for ((i, _), e) in texts.iter().zip(embs) {
                out[*i] = Some(Ok(e));
            }
        }
        // Every file modality (texts were embedded above), one batch each.
        for m in Modality::ALL.into_iter().filter(|m| *m != Modality::Text) {
            let items: Vec<(usize, &Media)> = inputs
                .iter()
                .enumerate()
                .filter(|(i, _)| out[*i].is_none())
                .filter_map(|(i, x)| match x {
                    Input::Bytes { modality, bytes } if *modality == m => Some((i, bytes)),
                    _ => None,
                })
                .collect();
            if items.is_empty() {
                continue;
            }
            embed_in_parallel(
                &items,
                budget,
                |b, upload| self.preprocess_within(m, b, upload),
                |x| Ok(self.embed_preprocessed(m, x)?.to_vec2::<f32>()?),
                &mut out,
            )?;
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(EmbedError::InvalidInput("input not handled".into()))))
            .collect())
    }
}
