//! CLIP (Contrastive Language-Image Pre-training): a ViT image tower and a causal transformer
//! text tower projected into one embedding space.
//!
//! - Paper: Radford et al. 2021, <https://arxiv.org/abs/2103.00020>
//! - Checkpoints: Hugging Face layout, e.g. `openai/clip-vit-base-patch32`, `-patch16`,
//!   `openai/clip-vit-large-patch14` (`config.json` + `model.safetensors`).
//! - Reference code: `transformers.models.clip.modeling_clip`.
//!
//! Every size, the activation (`quick_gelu` or `gelu`) and the layer-norm epsilon come from
//! `config.json`. `candle_transformers::models::clip` is not used for the towers because its
//! encoder only knows QuickGELU, ignores the text activation and the configured layer-norm
//! epsilon, and runs attention as three projections with a generic softmax. Here q/k/v are one
//! fused projection with the attention scale folded into the query weights, and softmax is
//! candle's fused last-dimension kernel; the outputs equal the reference to float rounding
//! (tests/it/clip.rs checks this against transformers and against candle-transformers).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{
    layer_norm, linear, linear_no_bias, LayerNorm, LayerNormConfig, Linear, VarBuilder,
};
use serde::Deserialize;

use super::device::{device_name, dtype_name};
use super::layers::{causal_mask, forward_in_chunks, FusedSelfAttention, TransposedLinear};
use super::preprocess::image::{
    preprocess as preprocess_image, preprocess_within as preprocess_image_within,
    ImagePreprocessConfig,
};
use super::preprocess::text::TextTokenizer;
use super::preprocess::PREPROCESS_VERSION;
use super::registry::{
    card_license, read_to_string, sha256_files, var_builder, weight_files, ModelSpec,
};
use super::{
    embed_in_parallel, BatchSlots, DecodeBudget, EmbedError, Encoder, Input, Modality, ModelInfo,
};

/// Activation of the MLP blocks, named as in Hugging Face's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Activation {
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU (erf form).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation of GELU.
    #[serde(alias = "gelu_new", rename = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

/// Text tower configuration (`text_config` in `config.json`). Missing keys take the
/// Hugging Face defaults, which are those of ViT-B/32.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Vision tower configuration (`vision_config` in `config.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Whole-model configuration, read from a Hugging Face `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default, alias = "text_config_dict")]
    pub text_config: ClipTextConfig,
    #[serde(default, alias = "vision_config_dict")]
    pub vision_config: ClipVisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
}

fn default_projection_dim() -> usize {
    512
}

impl ClipConfig {
    /// openai/clip-vit-base-patch32.
    pub fn vit_base_patch32() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
        }
    }

    /// openai/clip-vit-base-patch16.
    pub fn vit_base_patch16() -> Self {
        let mut c = Self::vit_base_patch32();
        c.vision_config.patch_size = 16;
        c
    }

    /// openai/clip-vit-large-patch14.
    pub fn vit_large_patch14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
        }
    }

    /// Parses a Hugging Face `config.json`. Keys absent from the file (older exports leave
    /// defaults out, and some keep the towers under `*_config_dict`) take Hugging Face's defaults.
    pub fn from_hf_json(json: &str) -> std::result::Result<Self, serde_json::Error> {
        // Some exports write `"text_config": null` beside a filled `text_config_dict`.
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        if let Some(obj) = value.as_object_mut() {
            for tower in ["text_config", "vision_config"] {
                if obj.get(tower).is_some_and(|v| v.is_null()) {
                    obj.remove(tower);
                }
                let dict = format!("{tower}_dict");
                if obj.get(&dict).is_some_and(|v| v.is_null()) || obj.contains_key(tower) {
                    obj.remove(&dict);
                }
            }
        }
        serde_json::from_value(value)
    }

    /// Number of image patches along one side.
    pub fn grid_size(&self) -> usize {
        self.vision_config.image_size / self.vision_config.patch_size
    }

    fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(candle_core::Error::Msg(format!(
                    "invalid CLIP config: {what}"
                )))
            }
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        check(
            t.num_attention_heads > 0 && t.hidden_size.is_multiple_of(t.num_attention_heads),
            "text hidden_size must be a multiple of num_attention_heads",
        )?;
        check(
            v.num_attention_heads > 0 && v.hidden_size.is_multiple_of(v.num_attention_heads),
            "vision hidden_size must be a multiple of num_attention_heads",
        )?;
        check(
            v.patch_size > 0 && v.image_size.is_multiple_of(v.patch_size),
            "image_size must be a multiple of patch_size",
        )?;
        check(self.projection_dim > 0, "projection_dim must be positive")
    }
}

/// CLIP's attention weights (`q_proj`, `k_proj`, `v_proj`, `out_proj`) as one fused projection.
fn attention(vb: VarBuilder, hidden: usize, num_heads: usize) -> Result<FusedSelfAttention> {
    let q = linear(hidden, hidden, vb.pp("q_proj"))?;
    let k = linear(hidden, hidden, vb.pp("k_proj"))?;
    let v = linear(hidden, hidden, vb.pp("v_proj"))?;
    let weight = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
    let bias = match (q.bias(), k.bias(), v.bias()) {
        (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[qb, kb, vb], 0)?),
        _ => None,
    };
    let out_proj = linear(hidden, hidden, vb.pp("out_proj"))?;
    FusedSelfAttention::new(weight, bias, out_proj, num_heads, None)
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: TransposedLinear,
    fc2: TransposedLinear,
    act: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, hidden: usize, intermediate: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            fc1: TransposedLinear::new(&linear(hidden, intermediate, vb.pp("fc1"))?)?,
            fc2: TransposedLinear::new(&linear(intermediate, hidden, vb.pp("fc2"))?)?,
            act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(xs)?)?)
    }
}

/// Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: FusedSelfAttention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

/// Shape of one tower's transformer, shared by the text and vision configurations.
struct TowerDims {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    act: Activation,
    eps: f64,
}

fn ln(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps,
            ..Default::default()
        },
        vb,
    )
}

impl EncoderLayer {
    fn new(vb: VarBuilder, d: &TowerDims) -> Result<Self> {
        Ok(Self {
            layer_norm1: ln(d.hidden, d.eps, vb.pp("layer_norm1"))?,
            self_attn: attention(vb.pp("self_attn"), d.hidden, d.heads)?,
            layer_norm2: ln(d.hidden, d.eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(vb.pp("mlp"), d.hidden, d.intermediate, d.act)?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + h
    }
}

#[derive(Debug, Clone)]
struct Transformer {
    layers: Vec<EncoderLayer>,
}

impl Transformer {
    fn new(vb: VarBuilder, d: &TowerDims) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..d.layers)
            .map(|i| EncoderLayer::new(vb.pp(i), d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |xs, layer| layer.forward(&xs, mask))
    }
}

/// The text tower up to the pooled (end-of-text) hidden state.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: candle_nn::Embedding,
    position_embedding: Tensor,
    encoder: Transformer,
    final_layer_norm: LayerNorm,
    max_positions: usize,
}

impl ClipTextTransformer {
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((c.max_position_embeddings, c.hidden_size), "weight")?;
        let dims = TowerDims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            encoder: Transformer::new(vb.pp("encoder"), &dims)?,
            final_layer_norm: ln(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            max_positions: c.max_position_embeddings,
        })
    }

    /// Hidden state at `pool_positions[i]` (the end-of-text token) of each sequence in the
    /// `[batch, seq]` u32 token matrix.
    pub fn forward_pooled(&self, input_ids: &Tensor, pool_positions: &[usize]) -> Result<Tensor> {
        let (b, seq_len) = input_ids.dims2()?;
        if seq_len > self.max_positions {
            candle_core::bail!(
                "sequence of {seq_len} tokens exceeds {}",
                self.max_positions
            );
        }
        if pool_positions.len() != b || pool_positions.iter().any(|&p| p >= seq_len) {
            candle_core::bail!("one pooling position within the sequence is needed per row");
        }
        let xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, seq_len)?)?;
        let mask = causal_mask(seq_len, xs.dtype(), xs.device())?;
        let xs = self.encoder.forward(&xs, Some(&mask))?;
        // Only the pooled rows are needed: select them before the final LayerNorm (row-wise).
        let idx: Vec<u32> = pool_positions
            .iter()
            .enumerate()
            .map(|(row, &p)| (row * seq_len + p) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, b, xs.device())?;
        let pooled = xs.reshape((b * seq_len, ()))?.index_select(&idx, 0)?;
        self.final_layer_norm.forward(&pooled)
    }
}

/// The vision tower up to the pooled (class token) hidden state.
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    patch_embedding: candle_nn::Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Transformer,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl ClipVisionTransformer {
    pub fn new(vb: VarBuilder, c: &ClipVisionConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: c.patch_size,
            ..Default::default()
        };
        let patch_embedding = candle_nn::conv2d_no_bias(
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            conv_cfg,
            emb.pp("patch_embedding"),
        )?;
        let num_positions = (c.image_size / c.patch_size).pow(2) + 1;
        let dims = TowerDims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
        };
        Ok(Self {
            patch_embedding,
            class_embedding: emb.get(c.hidden_size, "class_embedding")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((num_positions, c.hidden_size), "weight")?,
            // The misspelling is the checkpoint's key name.
            pre_layrnorm: ln(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Transformer::new(vb.pp("encoder"), &dims)?,
            post_layernorm: ln(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            image_size: c.image_size,
        })
    }

    /// Pooled class-token state for `[batch, 3, image_size, image_size]` pixels.
    pub fn forward_pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _c, h, w) = pixel_values.dims4()?;
        if h != self.image_size || w != self.image_size {
            candle_core::bail!("expected {0}x{0} pixels, got {h}x{w}", self.image_size);
        }
        let patches = self
            .patch_embedding
            .forward(pixel_values)?
            .flatten_from(2)?
            .transpose(1, 2)?; // b, patches, hidden
        let hidden = patches.dim(2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .expand((b, 1, hidden))?;
        let xs = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        let xs = self.encoder.forward(&xs, None)?;
        self.post_layernorm.forward(&xs.i((.., 0))?)
    }
}

/// Both towers and their projections. Either tower may be left out to save memory.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text: Option<(ClipTextTransformer, Linear)>,
    vision: Option<(ClipVisionTransformer, Linear)>,
    pub config: ClipConfig,
}

impl ClipModel {
    /// Loads both towers.
    pub fn new(vb: VarBuilder, config: &ClipConfig) -> Result<Self> {
        Self::load(vb, config, true, true)
    }

    /// Loads the towers asked for (`text`, `vision`).
    pub fn load(vb: VarBuilder, config: &ClipConfig, text: bool, vision: bool) -> Result<Self> {
        config.validate()?;
        let p = config.projection_dim;
        let text = if text {
            let t = ClipTextTransformer::new(vb.pp("text_model"), &config.text_config)?;
            let proj = linear_no_bias(config.text_config.hidden_size, p, vb.pp("text_projection"))?;
            Some((t, proj))
        } else {
            None
        };
        let vision = if vision {
            let v = ClipVisionTransformer::new(vb.pp("vision_model"), &config.vision_config)?;
            let proj = linear_no_bias(
                config.vision_config.hidden_size,
                p,
                vb.pp("visual_projection"),
            )?;
            Some((v, proj))
        } else {
            None
        };
        Ok(Self {
            text,
            vision,
            config: config.clone(),
        })
    }

    /// Unnormalised text embeddings `[batch, projection_dim]`; `eos_positions[i]` is the index
    /// of the end-of-text token in row `i`.
    pub fn get_text_features(&self, input_ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        let (tower, proj) = self
            .text
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("the text tower is not loaded".into()))?;
        proj.forward(&tower.forward_pooled(input_ids, eos_positions)?)
    }

    /// Unnormalised image embeddings `[batch, projection_dim]`.
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (tower, proj) = self
            .vision
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("the vision tower is not loaded".into()))?;
        proj.forward(&tower.forward_pooled(pixel_values)?)
    }
}

/// A loaded CLIP model served through the [`Encoder`](crate::embed::Encoder) trait: text and
/// image inputs, preprocessing as the reference does, batches split at `max_batch`.
pub struct ClipEncoder {
    info: ModelInfo,
    model: ClipModel,
    tokenizer: Option<TextTokenizer>,
    image_cfg: ImagePreprocessConfig,
    device: Device,
    dtype: DType,
    max_batch: usize,
}

impl ClipEncoder {
    /// Loads a Hugging Face CLIP directory (`config.json`, weights, `tokenizer.json`, and
    /// optionally `preprocessor_config.json`), only the towers of `spec.modalities`.
    pub fn load(
        dir: &Path,
        spec: &ModelSpec,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config = ClipConfig::from_hf_json(&read_to_string(&config_path)?)
            .map_err(|e| EmbedError::Config(format!("{}: {e}", config_path.display())))?;
        let wanted = spec
            .modalities
            .clone()
            .unwrap_or_else(|| vec![Modality::Text, Modality::Image]);
        if let Some(m) = wanted
            .iter()
            .find(|m| !matches!(m, Modality::Text | Modality::Image))
        {
            return Err(EmbedError::Config(format!(
                "CLIP models have no {m} encoder (only text and image)"
            )));
        }
        let (text, vision) = (
            wanted.contains(&Modality::Text),
            wanted.contains(&Modality::Image),
        );
        let files = weight_files(dir)?;
        let vb = var_builder(&files, dtype, device)?;
        let model = ClipModel::load(vb, &config, text, vision)?;
        let tokenizer = if text {
            let max_len = config.text_config.max_position_embeddings;
            Some(
                TextTokenizer::from_file(&dir.join("tokenizer.json"), max_len)?
                    .with_cleaning(spec.text_cleaning.unwrap_or_default()),
            )
        } else {
            None
        };
        let image_size = config.vision_config.image_size as u32;
        let pre = dir.join("preprocessor_config.json");
        let image_cfg = if pre.is_file() {
            ImagePreprocessConfig::from_hf_json(&read_to_string(&pre)?, image_size)?
        } else {
            ImagePreprocessConfig::clip(image_size)
        };
        if vision && image_cfg.output_size() != (image_size, image_size) {
            return Err(EmbedError::Config(format!(
                "preprocessor crops to {:?} but the model takes {image_size}x{image_size}",
                image_cfg.output_size()
            )));
        }
        let mut modalities = Vec::new();
        if text {
            modalities.push(Modality::Text);
        }
        if vision {
            modalities.push(Modality::Image);
        }
        let info = ModelInfo {
            name: spec.name.clone(),
            family: "clip".into(),
            modalities,
            dim: config.projection_dim,
            device: device_name(device),
            precision: dtype_name(dtype).into(),
            license: card_license(dir).unwrap_or_else(|| "unknown (see the model card)".into()),
            weights_sha256: sha256_files(&files)?,
            preprocess_version: PREPROCESS_VERSION,
        };
        Ok(Self {
            info,
            model,
            tokenizer,
            image_cfg,
            device: device.clone(),
            dtype,
            max_batch: spec.max_batch.max(1),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.model.config
    }

    pub fn image_config(&self) -> &ImagePreprocessConfig {
        &self.image_cfg
    }

    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_ref()
    }

    /// L2-normalised text embeddings, `[n, dim]` f32 on the CPU, one forward pass per
    /// `max_batch` texts.
    pub fn embed_texts(&self, texts: &[&str]) -> std::result::Result<Tensor, EmbedError> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| self.info.unsupported(Modality::Text))?;
        forward_in_chunks(texts, self.max_batch, |chunk| {
            let batch = tok.encode_batch(chunk)?;
            let ids = Tensor::from_vec(batch.ids, (batch.rows, batch.seq_len), &self.device)?;
            Ok(self.model.get_text_features(&ids, &batch.eos_positions)?)
        })
    }

    /// L2-normalised image embeddings for preprocessed pixels (`[3, h, w]` f32 each).
    pub fn embed_pixels(&self, images: &[&[f32]]) -> std::result::Result<Tensor, EmbedError> {
        if self.model.vision.is_none() {
            return Err(self.info.unsupported(Modality::Image));
        }
        forward_in_chunks(images, self.max_batch, |chunk| {
            Ok(self.model.get_image_features(&self.pixel_tensor(chunk)?)?)
        })
    }

    /// `[n, 3, h, w]` pixels in the model's dtype on its device, each input's size checked.
    fn pixel_tensor(&self, images: &[&[f32]]) -> std::result::Result<Tensor, EmbedError> {
        let (h, w) = self.image_cfg.output_size();
        let (h, w) = (h as usize, w as usize);
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for px in images {
            if px.len() != 3 * h * w {
                return Err(EmbedError::InvalidInput(format!(
                    "pixel tensor of {} values, expected 3x{h}x{w}",
                    px.len()
                )));
            }
            data.extend_from_slice(px);
        }
        Ok(Tensor::from_vec(data, (images.len(), 3, h, w), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Unnormalised projected image features (what transformers' `get_image_features` returns).
    pub fn image_features_raw(&self, images: &[&[f32]]) -> std::result::Result<Tensor, EmbedError> {
        let feats = self.model.get_image_features(&self.pixel_tensor(images)?)?;
        Ok(feats.to_dtype(DType::F32)?)
    }

    /// Decodes and preprocesses an encoded image file into the model's pixel layout.
    pub fn preprocess_image(&self, bytes: &[u8]) -> std::result::Result<Vec<f32>, EmbedError> {
        preprocess_image(bytes, &self.image_cfg)
    }
}

impl Encoder for ClipEncoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed_batch_within(
        &self,
        inputs: &[Input],
        budget: &DecodeBudget,
    ) -> std::result::Result<Vec<std::result::Result<Vec<f32>, EmbedError>>, EmbedError> {
        let mut out: BatchSlots = (0..inputs.len()).map(|_| None).collect();
        let mut texts = Vec::new();
        let mut images = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match input {
                Input::Text(t) if self.tokenizer.is_some() => texts.push((i, t.as_str())),
                Input::Bytes {
                    modality: Modality::Image,
                    bytes,
                } if self.model.vision.is_some() => images.push((i, bytes)),
                other => out[i] = Some(Err(self.info.unsupported(other.modality()))),
            }
        }
        if !texts.is_empty() {
            let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
            let embs = self.embed_texts(&strs)?.to_vec2::<f32>()?;
            for ((i, _), e) in texts.iter().zip(embs) {
                out[*i] = Some(Ok(e));
            }
        }
        if !images.is_empty() {
            embed_in_parallel(
                &images,
                budget,
                |b, upload| preprocess_image_within(b, &self.image_cfg, upload),
                |px| Ok(self.embed_pixels(px)?.to_vec2::<f32>()?),
                &mut out,
            )?;
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every input answered"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_with_defaults_and_dict_fallback() {
        let c = ClipConfig::from_hf_json(
            r#"{"projection_dim": 768, "text_config": null,
                "text_config_dict": {"hidden_size": 768, "hidden_act": "gelu"},
                "vision_config": {"patch_size": 14, "hidden_size": 1024, "layer_norm_eps": 1e-6}}"#,
        )
        .unwrap();
        assert_eq!(c.projection_dim, 768);
        assert_eq!(c.text_config.hidden_size, 768);
        assert_eq!(c.text_config.hidden_act, Activation::Gelu);
        assert_eq!(c.text_config.num_hidden_layers, 12);
        assert_eq!(c.vision_config.patch_size, 14);
        assert_eq!(c.vision_config.layer_norm_eps, 1e-6);
        assert_eq!(c.vision_config.hidden_act, Activation::QuickGelu);
        assert_eq!(c.grid_size(), 16);
    }

    #[test]
    fn rejects_unknown_activation() {
        let e = ClipConfig::from_hf_json(r#"{"text_config": {"hidden_act": "swish"}}"#);
        assert!(e.is_err());
    }

    #[test]
    fn presets_are_consistent() {
        for c in [
            ClipConfig::vit_base_patch32(),
            ClipConfig::vit_base_patch16(),
            ClipConfig::vit_large_patch14(),
        ] {
            c.validate().unwrap();
        }
        assert_eq!(ClipConfig::vit_large_patch14().grid_size(), 16);
    }
}
