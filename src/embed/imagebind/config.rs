//! ImageBind sizes, read from a model directory's `config.json` (written by omnibind's converter
//! and by the fixture script), with the official `imagebind_huge` values as the named preset.
//!
//! The official `ImageBindModel` fixes everything except the widths, depths and head counts of
//! the six trunks and the shared output dimension: 224x224 images patched by 2x14x14 over two
//! frames, 77-token texts over a 49408-token vocabulary, 128x204 filterbanks with a 16x16 stem of
//! stride 10, 224x224 depth and thermal maps with 16x16 patches, 6x2000 IMU traces in windows of
//! 8 samples, MLP ratio 4, layer-norm epsilon 1e-6 in trunks and heads and 1e-5 in the stems.
//! Those fixed values are fields here too (with the official values as defaults) so that the
//! code states them in one place.

use serde::{Deserialize, Serialize};

use crate::embed::preprocess::depth::DepthConfig;
use crate::embed::preprocess::text::TextCleaning;
use crate::embed::Modality;

/// One modality's transformer trunk.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub embed_dim: usize,
    pub num_blocks: usize,
    pub num_heads: usize,
    /// MLP hidden size = `mlp_ratio * embed_dim` (4 in every official trunk).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    /// Layer scale of the blocks: absent in the official model; `per_channel` or `scalar` read
    /// `layer_scale_gamma1/2` from the checkpoint.
    #[serde(default)]
    pub layer_scale: Option<LayerScale>,
}

fn default_mlp_ratio() -> usize {
    4
}

/// Layer-scale variants of the official `BlockWithMasking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerScale {
    PerChannel,
    Scalar,
}

impl TrunkConfig {
    fn new(embed_dim: usize, num_blocks: usize, num_heads: usize) -> Self {
        Self {
            embed_dim,
            num_blocks,
            num_heads,
            mlp_ratio: 4,
            layer_scale: None,
        }
    }
}

/// Whole-model configuration. Modalities absent from the file are absent from the model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ImageBindConfig {
    /// Dimension of the shared embedding space.
    pub out_embed_dim: usize,
    #[serde(default)]
    pub vision: Option<TrunkConfig>,
    #[serde(default)]
    pub text: Option<TrunkConfig>,
    #[serde(default)]
    pub audio: Option<TrunkConfig>,
    #[serde(default)]
    pub depth: Option<TrunkConfig>,
    #[serde(default)]
    pub thermal: Option<TrunkConfig>,
    #[serde(default)]
    pub imu: Option<TrunkConfig>,
    /// Fixed input geometry; the official values unless a file says otherwise.
    #[serde(default)]
    pub inputs: InputConfig,
}

/// Input geometry and fixed constants of the official model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    pub image_size: usize,
    /// Frames per vision clip (images are repeated to this many).
    pub video_frames: usize,
    /// Conv3d kernel (= stride) of the vision stem: time, height, width.
    pub vision_kernel: [usize; 3],
    pub context_length: usize,
    pub vocab_size: usize,
    pub audio_num_mel_bins: usize,
    pub audio_target_len: usize,
    pub audio_kernel: usize,
    pub audio_stride: usize,
    /// Seconds per audio clip (`clip_duration` of the official clip sampler).
    pub audio_clip_secs: u32,
    /// Clips per audio file (`clips_per_video`); the audio embedding is their mean.
    pub audio_clips: usize,
    pub depth_kernel: usize,
    pub thermal_kernel: usize,
    pub imu_channels: usize,
    pub imu_len: usize,
    pub imu_kernel: usize,
    /// Depth-to-disparity conversion (camera and normalisation), see [`DepthConfig`].
    pub depth: DepthConfig,
    /// The clean-up of texts before BPE: `ftfy` (the official tokenizer's `basic_clean`, the
    /// default) or `none`.
    pub text_cleaning: TextCleaning,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            image_size: 224,
            video_frames: 2,
            vision_kernel: [2, 14, 14],
            context_length: 77,
            vocab_size: 49408,
            audio_num_mel_bins: 128,
            audio_target_len: 204,
            audio_kernel: 16,
            audio_stride: 10,
            audio_clip_secs: 2,
            audio_clips: 3,
            depth_kernel: 16,
            thermal_kernel: 16,
            imu_channels: 6,
            imu_len: 2000,
            imu_kernel: 8,
            depth: DepthConfig::default(),
            text_cleaning: TextCleaning::Ftfy,
        }
    }
}

/// Layer-norm epsilon of the trunks (blocks, vision pre-LN) and heads.
pub const TRUNK_LN_EPS: f64 = 1e-6;
/// Layer-norm epsilon of the audio, depth, thermal and IMU stems (`nn.LayerNorm` default).
pub const STEM_LN_EPS: f64 = 1e-5;
/// The official post-processors clamp the exponentiated logit scale at this value.
pub const MAX_LOGIT_SCALE: f64 = 100.0;

impl ImageBindConfig {
    /// The official `imagebind_huge` (imagebind_huge.pth): ViT-H vision and text from OpenCLIP,
    /// 1024-d shared space.
    pub fn huge() -> Self {
        Self {
            out_embed_dim: 1024,
            vision: Some(TrunkConfig::new(1280, 32, 16)),
            text: Some(TrunkConfig::new(1024, 24, 16)),
            audio: Some(TrunkConfig::new(768, 12, 12)),
            depth: Some(TrunkConfig::new(384, 12, 8)),
            thermal: Some(TrunkConfig::new(768, 12, 12)),
            imu: Some(TrunkConfig::new(512, 6, 8)),
            inputs: InputConfig::default(),
        }
    }

    /// Parses omnibind's `config.json` (`"model_type": "imagebind"`).
    pub fn from_json(json: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| "config.json is not an object".to_string())?;
        match obj.remove("model_type") {
            Some(serde_json::Value::String(t)) if t == "imagebind" => {}
            other => return Err(format!("model_type must be \"imagebind\", got {other:?}")),
        }
        // A named preset may stand in for the sizes.
        if let Some(serde_json::Value::String(p)) = obj.remove("preset") {
            return match p.as_str() {
                "imagebind_huge" if obj.is_empty() => Ok(Self::huge()),
                "imagebind_huge" => Err("`preset` cannot be combined with other keys".into()),
                other => Err(format!("unknown preset `{other}` (known: imagebind_huge)")),
            };
        }
        let c: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// The trunk of a modality (images and videos share the vision trunk).
    pub fn trunk(&self, m: Modality) -> Option<&TrunkConfig> {
        match m {
            Modality::Image | Modality::Video => self.vision.as_ref(),
            Modality::Text => self.text.as_ref(),
            Modality::Audio => self.audio.as_ref(),
            Modality::Depth => self.depth.as_ref(),
            Modality::Thermal => self.thermal.as_ref(),
            Modality::Imu => self.imu.as_ref(),
        }
    }

    /// Modalities with a trunk in this configuration, in [`Modality::ALL`] order.
    pub fn modalities(&self) -> Vec<Modality> {
        Modality::ALL
            .into_iter()
            .filter(|&m| self.trunk(m).is_some())
            .collect()
    }

    /// omnibind's `config.json` for this configuration (every size spelled out).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let obj = v.as_object_mut().expect("config is an object");
        obj.retain(|_, x| !x.is_null());
        obj.insert("model_type".into(), "imagebind".into());
        serde_json::to_string_pretty(&v).expect("config serialises") + "\n"
    }

    pub fn validate(&self) -> Result<(), String> {
        self.inputs.depth.validate()?;
        if self.out_embed_dim == 0 {
            return Err("out_embed_dim must be positive".into());
        }
        for (name, t) in [
            ("vision", &self.vision),
            ("text", &self.text),
            ("audio", &self.audio),
            ("depth", &self.depth),
            ("thermal", &self.thermal),
            ("imu", &self.imu),
        ] {
            if let Some(t) = t {
                if t.embed_dim == 0 || t.num_heads == 0 || t.embed_dim % t.num_heads != 0 {
                    return Err(format!(
                        "{name}: embed_dim ({}) must be a positive multiple of num_heads ({})",
                        t.embed_dim, t.num_heads
                    ));
                }
                if t.mlp_ratio == 0 {
                    return Err(format!("{name}: mlp_ratio must be positive"));
                }
            }
        }
        let i = &self.inputs;
        let [kt, kh, kw] = i.vision_kernel;
        if kt == 0
            || kh == 0
            || kw == 0
            || !i.image_size.is_multiple_of(kh)
            || !i.image_size.is_multiple_of(kw)
        {
            return Err("image_size must be a multiple of the vision kernel".into());
        }
        if !i.video_frames.is_multiple_of(kt) {
            return Err("video_frames must be a multiple of the temporal kernel".into());
        }
        if i.audio_kernel == 0
            || i.audio_stride == 0
            || i.audio_num_mel_bins < i.audio_kernel
            || i.audio_target_len < i.audio_kernel
        {
            return Err("the audio stem does not fit the filterbank".into());
        }
        if i.audio_clip_secs == 0 || i.audio_clips == 0 {
            return Err("audio_clip_secs and audio_clips must be positive".into());
        }
        for (name, k) in [("depth", i.depth_kernel), ("thermal", i.thermal_kernel)] {
            if k == 0 || !i.image_size.is_multiple_of(k) {
                return Err(format!("image_size must be a multiple of {name}_kernel"));
            }
        }
        if i.imu_kernel == 0 || !i.imu_len.is_multiple_of(i.imu_kernel) {
            return Err("imu_len must be a multiple of imu_kernel".into());
        }
        if i.context_length == 0 || i.vocab_size == 0 {
            return Err("context_length and vocab_size must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_preset_is_the_official_imagebind_huge() {
        let c = ImageBindConfig::huge();
        c.validate().unwrap();
        assert_eq!(c.out_embed_dim, 1024);
        let dims = |t: &Option<TrunkConfig>| {
            let t = t.as_ref().unwrap();
            (t.embed_dim, t.num_blocks, t.num_heads)
        };
        assert_eq!(dims(&c.vision), (1280, 32, 16));
        assert_eq!(dims(&c.text), (1024, 24, 16));
        assert_eq!(dims(&c.audio), (768, 12, 12));
        assert_eq!(dims(&c.depth), (384, 12, 8));
        assert_eq!(dims(&c.thermal), (768, 12, 12));
        assert_eq!(dims(&c.imu), (512, 6, 8));
        assert_eq!(c.modalities().len(), 7);
    }

    #[test]
    fn parses_sizes_and_presets() {
        let c = ImageBindConfig::from_json(
            r#"{"model_type": "imagebind", "out_embed_dim": 8,
                "text": {"embed_dim": 4, "num_blocks": 1, "num_heads": 2},
                "imu": {"embed_dim": 6, "num_blocks": 1, "num_heads": 3}}"#,
        )
        .unwrap();
        assert_eq!(c.modalities(), vec![Modality::Text, Modality::Imu]);
        assert_eq!(c.inputs, InputConfig::default());
        let h =
            ImageBindConfig::from_json(r#"{"model_type":"imagebind","preset":"imagebind_huge"}"#)
                .unwrap();
        assert_eq!(h, ImageBindConfig::huge());
        for bad in [
            r#"{"model_type": "clip", "out_embed_dim": 8}"#,
            r#"{"model_type": "imagebind", "out_embed_dim": 8, "text": {"embed_dim": 5, "num_blocks": 1, "num_heads": 2}}"#,
            r#"{"model_type": "imagebind", "preset": "imagebind_tiny"}"#,
            r#"{"model_type": "imagebind", "out_embed_dim": 8, "text": {"embed_dim": 4, "num_blocks": 1, "num_heads": 2, "typo": 1}}"#,
        ] {
            assert!(ImageBindConfig::from_json(bad).is_err(), "{bad}");
        }
    }
}
