//! The ImageBind towers in candle: stems, pre-LN transformer trunks, heads and post-processors,
//! loaded under the official state-dict key names (the table [`KEYS`] is the only place that
//! spells them).
//!
//! Differences in form, not in result, from the official code: batch-first layout throughout
//! (the official trunks permute to sequence-first for `nn.MultiheadAttention`), the attention
//! scale folded into the query rows of the fused in-projection, the vision Conv3d folded into
//! one Conv2d over frames stacked as channels, the heads' LayerNorm applied to the pooled token
//! only (it is row-wise), and texts run at the batch's longest length rather than always 77
//! tokens (the trunk is causal, so positions after the end-of-text token cannot change it).

use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::{conv2d_no_bias, linear, linear_no_bias, Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::config::{
    ImageBindConfig, LayerScale, TrunkConfig, MAX_LOGIT_SCALE, STEM_LN_EPS, TRUNK_LN_EPS,
};
use crate::embed::layers::{causal_mask, FusedSelfAttention, LayerNorm, TransposedLinear};
use crate::embed::Modality;

/// Official key names of one modality, relative to `modality_preprocessors.<name>`,
/// `modality_trunks.<name>`, `modality_heads.<name>` and `modality_postprocessors.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct ModalityKeys {
    /// The modality's name in the state dict.
    pub name: &'static str,
    /// The stem's projection (conv or linear), within the preprocessor.
    pub stem_proj: &'static str,
    /// The stem's LayerNorm, within the preprocessor.
    pub stem_norm: Option<&'static str>,
    /// Learned position embedding, within the preprocessor.
    pub pos_embed: &'static str,
    /// LayerNorm before the blocks, within the trunk.
    pub pre_ln: Option<&'static str>,
    /// The head's LayerNorm and projection.
    pub head_norm: &'static str,
    pub head_proj: &'static str,
    /// `log_logit_scale` within the post-processor (vision has none: it is only normalised).
    pub logit_scale: Option<&'static str>,
}

/// The one table of checkpoint key names (facebookresearch/ImageBind, `imagebind_model.py`).
/// The audio and thermal stems sit under `rgbt_stem` because their preprocessors subclass the
/// RGB-D-T one; the IMU head has a Dropout at index 2, so its projection is `3`.
pub const KEYS: [ModalityKeys; 6] = [
    ModalityKeys {
        name: "vision",
        stem_proj: "rgbt_stem.proj.1", // proj.0 is PadIm2Video
        stem_norm: None,
        pos_embed: "pos_embedding_helper.pos_embed",
        pre_ln: Some("pre_transformer_layer.0"),
        head_norm: "0",
        head_proj: "2",
        logit_scale: None,
    },
    ModalityKeys {
        name: "text",
        stem_proj: "token_embedding",
        stem_norm: None,
        pos_embed: "pos_embed",
        pre_ln: None,
        head_norm: "proj.0",
        head_proj: "proj.1",
        logit_scale: Some("1.log_logit_scale"),
    },
    ModalityKeys {
        name: "audio",
        stem_proj: "rgbt_stem.proj",
        stem_norm: Some("rgbt_stem.norm_layer"),
        pos_embed: "pos_embedding_helper.pos_embed",
        pre_ln: None,
        head_norm: "0",
        head_proj: "2",
        logit_scale: Some("1.log_logit_scale"),
    },
    ModalityKeys {
        name: "depth",
        stem_proj: "depth_stem.proj",
        stem_norm: Some("depth_stem.norm_layer"),
        pos_embed: "pos_embedding_helper.pos_embed",
        pre_ln: None,
        head_norm: "0",
        head_proj: "2",
        logit_scale: Some("1.log_logit_scale"),
    },
    ModalityKeys {
        name: "thermal",
        stem_proj: "rgbt_stem.proj",
        stem_norm: Some("rgbt_stem.norm_layer"),
        pos_embed: "pos_embedding_helper.pos_embed",
        pre_ln: None,
        head_norm: "0",
        head_proj: "2",
        logit_scale: Some("1.log_logit_scale"),
    },
    ModalityKeys {
        name: "imu",
        stem_proj: "imu_stem.proj",
        stem_norm: Some("imu_stem.norm_layer"),
        pos_embed: "pos_embed",
        pre_ln: None,
        head_norm: "0",
        head_proj: "3",
        logit_scale: Some("1.log_logit_scale"),
    },
];

/// The towers that exist: images and videos share `vision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tower {
    Vision,
    Text,
    Audio,
    Depth,
    Thermal,
    Imu,
}

impl Tower {
    pub const ALL: [Tower; 6] = [
        Tower::Vision,
        Tower::Text,
        Tower::Audio,
        Tower::Depth,
        Tower::Thermal,
        Tower::Imu,
    ];

    pub fn of(m: Modality) -> Tower {
        match m {
            Modality::Image | Modality::Video => Tower::Vision,
            Modality::Text => Tower::Text,
            Modality::Audio => Tower::Audio,
            Modality::Depth => Tower::Depth,
            Modality::Thermal => Tower::Thermal,
            Modality::Imu => Tower::Imu,
        }
    }

    pub fn keys(self) -> &'static ModalityKeys {
        &KEYS[self as usize]
    }

    pub fn trunk_config(self, c: &ImageBindConfig) -> Option<&TrunkConfig> {
        match self {
            Tower::Vision => c.vision.as_ref(),
            Tower::Text => c.text.as_ref(),
            Tower::Audio => c.audio.as_ref(),
            Tower::Depth => c.depth.as_ref(),
            Tower::Thermal => c.thermal.as_ref(),
            Tower::Imu => c.imu.as_ref(),
        }
    }

    /// Removes this tower from a configuration.
    pub fn remove_from(self, c: &mut ImageBindConfig) {
        match self {
            Tower::Vision => c.vision = None,
            Tower::Text => c.text = None,
            Tower::Audio => c.audio = None,
            Tower::Depth => c.depth = None,
            Tower::Thermal => c.thermal = None,
            Tower::Imu => c.imu = None,
        }
    }

    /// The official trunks add a learned key/value token (`add_bias_kv`) in every modality
    /// except vision and text.
    fn add_bias_kv(self) -> bool {
        !matches!(self, Tower::Vision | Tower::Text)
    }
}

fn ln(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    LayerNorm::load(size, eps, vb)
}

/// `nn.MultiheadAttention` (self-attention, fused in-projection, optional `bias_k`/`bias_v`).
fn multihead_attention(
    vb: VarBuilder,
    dim: usize,
    num_heads: usize,
    bias_kv: bool,
) -> Result<FusedSelfAttention> {
    let w = vb.get((3 * dim, dim), "in_proj_weight")?;
    let b = vb.get(3 * dim, "in_proj_bias")?;
    let bias_kv = if bias_kv {
        Some((
            vb.get((1, 1, dim), "bias_k")?,
            vb.get((1, 1, dim), "bias_v")?,
        ))
    } else {
        None
    };
    let out_proj = linear(dim, dim, vb.pp("out_proj"))?;
    FusedSelfAttention::new(w, Some(b), out_proj, num_heads, bias_kv)
}

/// `BlockWithMasking`: x + attn(norm_1(x)), then x + mlp(norm_2(x)), each branch optionally
/// multiplied by a layer-scale gamma. DropPath and dropout are identities at inference.
#[derive(Debug, Clone)]
struct Block {
    norm_1: LayerNorm,
    attn: FusedSelfAttention,
    norm_2: LayerNorm,
    fc1: TransposedLinear,
    fc2: TransposedLinear,
    gammas: Option<(Tensor, Tensor)>,
}

impl Block {
    fn new(vb: VarBuilder, c: &TrunkConfig, bias_kv: bool) -> Result<Self> {
        let d = c.embed_dim;
        let hidden = c.mlp_ratio * d;
        let gammas = match c.layer_scale {
            None => None,
            Some(kind) => {
                let shape = match kind {
                    LayerScale::PerChannel => (1, 1, d),
                    LayerScale::Scalar => (1, 1, 1),
                };
                Some((
                    vb.get(shape, "layer_scale_gamma1")?,
                    vb.get(shape, "layer_scale_gamma2")?,
                ))
            }
        };
        Ok(Self {
            norm_1: ln(d, TRUNK_LN_EPS, vb.pp("norm_1"))?,
            attn: multihead_attention(vb.pp("attn"), d, c.num_heads, bias_kv)?,
            norm_2: ln(d, TRUNK_LN_EPS, vb.pp("norm_2"))?,
            fc1: TransposedLinear::new(&linear(d, hidden, vb.pp("mlp.fc1"))?)?,
            fc2: TransposedLinear::new(&linear(hidden, d, vb.pp("mlp.fc2"))?)?,
            gammas,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.attn.forward(&self.norm_1.forward(xs)?, mask)?;
        if let Some((g1, _)) = &self.gammas {
            h = h.broadcast_mul(g1)?;
        }
        let xs = (xs + h)?;
        let mut h = self
            .fc2
            .forward(&self.fc1.forward(&self.norm_2.forward(&xs)?)?.gelu_erf()?)?;
        if let Some((_, g2)) = &self.gammas {
            h = h.broadcast_mul(g2)?;
        }
        xs + h
    }
}

/// The patch or token stem of a tower.
#[derive(Debug, Clone)]
enum Stem {
    /// Vision: the Conv3d folded into a Conv2d over `[c * frames + t]` channels.
    Video { conv: Conv2d, frames: usize },
    /// Audio, depth, thermal: Conv2d then LayerNorm over channels. `input` is the configured
    /// input size and `covered` the part of it the strided kernel reaches (the official audio
    /// stem, 16x16 with stride 10 over 128x204, leaves the last 2 rows and 6 columns out).
    Conv {
        conv: Conv2d,
        norm: LayerNorm,
        input: (usize, usize),
        covered: (usize, usize),
    },
    /// Text: token embedding.
    Tokens(candle_nn::Embedding),
    /// IMU: windows of `kernel` samples of every channel, linear, LayerNorm.
    Imu {
        proj: Linear,
        norm: LayerNorm,
        kernel: usize,
    },
}

/// One modality: stem, class token and position embedding, trunk, head, logit scale.
#[derive(Debug, Clone)]
pub struct TowerModel {
    tower: Tower,
    stem: Stem,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    pre_ln: Option<LayerNorm>,
    blocks: Vec<Block>,
    head_norm: LayerNorm,
    head_proj: Linear,
    logit_scale: f64,
}

impl TowerModel {
    /// Loads a tower from a VarBuilder at the checkpoint's root.
    pub fn new(vb: VarBuilder, tower: Tower, c: &ImageBindConfig) -> Result<Self> {
        let t = tower
            .trunk_config(c)
            .ok_or_else(|| candle_core::Error::Msg(format!("no {tower:?} trunk in the config")))?;
        let i = &c.inputs;
        let k = tower.keys();
        let pre = vb.pp("modality_preprocessors").pp(k.name);
        let d = t.embed_dim;
        let conv_cfg = |stride: usize| Conv2dConfig {
            stride,
            ..Default::default()
        };
        let (stem, num_tokens) = match tower {
            Tower::Vision => {
                let [kt, kh, kw] = i.vision_kernel;
                if kh != kw {
                    candle_core::bail!("non-square vision kernels are not supported");
                }
                let w = pre.get((d, 3, kt, kh, kw), &format!("{}.weight", k.stem_proj))?;
                // out[o] = sum over (c, t, y, x) of w[o, c, t, y, x] * in[c, t, ...]: with the
                // time axis folded into channels (index c * kt + t) this is one Conv2d.
                let w = w.reshape((d, 3 * kt, kh, kw))?;
                let grid = i.image_size / kh;
                let frames = i.video_frames;
                if frames != kt {
                    candle_core::bail!("only clips of exactly one temporal patch are supported");
                }
                let conv = Conv2d::new(w, None, conv_cfg(kh));
                (Stem::Video { conv, frames }, 1 + grid * grid)
            }
            Tower::Text => {
                let emb = candle_nn::embedding(i.vocab_size, d, pre.pp(k.stem_proj))?;
                (Stem::Tokens(emb), i.context_length)
            }
            Tower::Audio | Tower::Depth | Tower::Thermal => {
                let (kernel, stride, h, w) = match tower {
                    Tower::Audio => (
                        i.audio_kernel,
                        i.audio_stride,
                        i.audio_num_mel_bins,
                        i.audio_target_len,
                    ),
                    Tower::Depth => (i.depth_kernel, i.depth_kernel, i.image_size, i.image_size),
                    _ => (
                        i.thermal_kernel,
                        i.thermal_kernel,
                        i.image_size,
                        i.image_size,
                    ),
                };
                let conv = conv2d_no_bias(1, d, kernel, conv_cfg(stride), pre.pp(k.stem_proj))?;
                let norm = ln(
                    d,
                    STEM_LN_EPS,
                    pre.pp(k.stem_norm.expect("conv stems have a norm")),
                )?;
                let (ph, pw) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
                let covered = ((ph - 1) * stride + kernel, (pw - 1) * stride + kernel);
                let stem = Stem::Conv {
                    conv,
                    norm,
                    input: (h, w),
                    covered,
                };
                (stem, 1 + ph * pw)
            }
            Tower::Imu => {
                let proj = linear_no_bias(i.imu_channels * i.imu_kernel, d, pre.pp(k.stem_proj))?;
                let norm = ln(
                    d,
                    STEM_LN_EPS,
                    pre.pp(k.stem_norm.expect("imu stem has a norm")),
                )?;
                let stem = Stem::Imu {
                    proj,
                    norm,
                    kernel: i.imu_kernel,
                };
                (stem, 1 + i.imu_len / i.imu_kernel)
            }
        };
        let cls_token = match tower {
            Tower::Text => None,
            _ => Some(pre.get((1, 1, d), "cls_token")?),
        };
        let pos_embed = pre.get((1, num_tokens, d), k.pos_embed)?;
        let trunk = vb.pp("modality_trunks").pp(k.name);
        let pre_ln = match k.pre_ln {
            Some(p) => Some(ln(d, TRUNK_LN_EPS, trunk.pp(p))?),
            None => None,
        };
        let blocks = (0..t.num_blocks)
            .map(|b| Block::new(trunk.pp("blocks").pp(b), t, tower.add_bias_kv()))
            .collect::<Result<Vec<_>>>()?;
        let head = vb.pp("modality_heads").pp(k.name);
        let head_norm = ln(d, TRUNK_LN_EPS, head.pp(k.head_norm))?;
        let head_proj = linear_no_bias(d, c.out_embed_dim, head.pp(k.head_proj))?;
        let logit_scale = match k.logit_scale {
            Some(key) => {
                let s = vb
                    .pp("modality_postprocessors")
                    .pp(k.name)
                    .get((), key)?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?;
                // torch.clip(log_logit_scale.exp(), max=100), in float32 as the reference.
                (s.exp()).min(MAX_LOGIT_SCALE as f32) as f64
            }
            None => 1.0,
        };
        Ok(Self {
            tower,
            stem,
            cls_token,
            pos_embed,
            pre_ln,
            blocks,
            head_norm,
            head_proj,
            logit_scale,
        })
    }

    pub fn tower(&self) -> Tower {
        self.tower
    }

    /// The post-processor's factor (1 for vision, which is only normalised).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    /// Stem, class token and position embedding: `[batch, tokens, dim]`.
    fn tokens(&self, xs: &Tensor) -> Result<Tensor> {
        let patches = match &self.stem {
            Stem::Video { conv, frames } => {
                // [b, 3, h, w] images are repeated into `frames` frames (PadIm2Video "repeat");
                // [b, 3, frames, h, w] clips are taken as they are.
                let xs = match xs.rank() {
                    4 => {
                        let (b, c, h, w) = xs.dims4()?;
                        xs.unsqueeze(2)?.broadcast_as((b, c, *frames, h, w))?
                    }
                    5 => xs.clone(),
                    r => candle_core::bail!("vision input of rank {r}"),
                };
                let (b, c, t, h, w) = xs.dims5()?;
                if t != *frames {
                    candle_core::bail!("vision clips must have {frames} frames, got {t}");
                }
                let xs = xs.contiguous()?.reshape((b, c * t, h, w))?;
                conv.forward(&xs)?.flatten_from(2)?.transpose(1, 2)?
            }
            Stem::Conv {
                conv,
                norm,
                input,
                covered,
            } => {
                // Only the covered part enters the conv (the same output): candle's conv2d
                // backward pass cannot give the input gradient of an uncovered remainder and
                // fails on the shape mismatch.
                let (_, _, h, w) = xs.dims4()?;
                let xs = if (h, w) == *input && covered != input {
                    xs.narrow(2, 0, covered.0)?.narrow(3, 0, covered.1)?
                } else {
                    xs.clone()
                };
                let p = conv.forward(&xs)?.flatten_from(2)?.transpose(1, 2)?;
                norm.forward(&p.contiguous()?)?
            }
            Stem::Tokens(emb) => emb.forward(xs)?,
            Stem::Imu { proj, norm, kernel } => {
                // unfold(-1, k, k).permute(0, 2, 1, 3): [b, c, n*k] -> [b, n, c*k].
                let (b, c, len) = xs.dims3()?;
                let n = len / kernel;
                let w = xs
                    .reshape((b, c, n, *kernel))?
                    .permute((0, 2, 1, 3))?
                    .contiguous()?
                    .reshape((b, n, c * kernel))?;
                norm.forward(&proj.forward(&w)?)?
            }
        };
        let (b, n, d) = patches.dims3()?;
        let xs = match &self.cls_token {
            Some(cls) => Tensor::cat(&[&cls.expand((b, 1, d))?, &patches], 1)?,
            None => patches,
        };
        let total = xs.dim(1)?;
        if total > self.pos_embed.dim(1)?
            || (self.cls_token.is_some() && total != self.pos_embed.dim(1)?)
        {
            candle_core::bail!(
                "{:?} input gives {n} tokens; the position embedding has {}",
                self.tower,
                self.pos_embed.dim(1)?
            );
        }
        xs.broadcast_add(&self.pos_embed.narrow(1, 0, total)?)
    }

    fn trunk(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let xs = match &self.pre_ln {
            Some(ln) => ln.forward(xs)?,
            None => xs.clone(),
        };
        self.blocks
            .iter()
            .try_fold(xs, |xs, block| block.forward(&xs, mask))
    }

    /// Head output before the post-processor, `[batch, out_dim]`. `xs` is the preprocessed input
    /// (`[b, 3, h, w]` images or `[b, 3, frames, h, w]` clips; `[b, 1, mels, frames]` filterbanks;
    /// `[b, 1, h, w]` depth or thermal; `[b, 6, len]` IMU). Text goes through [`Self::text_head`].
    pub fn head(&self, xs: &Tensor) -> Result<Tensor> {
        if self.tower == Tower::Text {
            candle_core::bail!("text input needs pooling positions: use text_head");
        }
        let xs = self.tokens(xs)?;
        let xs = self.trunk(&xs, None)?;
        self.head_proj
            .forward(&self.head_norm.forward(&xs.i((.., 0))?)?)
    }

    /// Text head output `[batch, out_dim]` for `[batch, seq]` u32 token ids, pooled at
    /// `eos_positions` (the official code takes the argmax of the ids: the end-of-text token).
    pub fn text_head(&self, ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        if eos_positions.len() != b || eos_positions.iter().any(|&p| p >= seq) {
            candle_core::bail!("one pooling position within the sequence is needed per row");
        }
        let xs = self.tokens(ids)?;
        let mask = causal_mask(seq, xs.dtype(), xs.device())?;
        let xs = self.trunk(&xs, Some(&mask))?;
        let idx: Vec<u32> = eos_positions
            .iter()
            .enumerate()
            .map(|(row, &p)| (row * seq + p) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, b, xs.device())?;
        let pooled = xs.reshape((b * seq, ()))?.index_select(&idx, 0)?;
        self.head_proj.forward(&self.head_norm.forward(&pooled)?)
    }

    /// The official post-processor: L2-normalise rows, times the logit scale.
    pub fn postprocess(&self, head: &Tensor) -> Result<Tensor> {
        let n = normalize_rows(head)?;
        if self.logit_scale == 1.0 {
            Ok(n)
        } else {
            n * self.logit_scale
        }
    }
}

/// `torch.nn.functional.normalize(x, dim=-1)`: rows divided by max(norm, 1e-12).
pub fn normalize_rows(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}

/// Means of consecutive groups of `clips` rows: `[n * clips, d]` -> `[n, d]` (the official
/// model averages the post-processed outputs of the clips of one audio or video).
pub fn mean_over_clips(xs: &Tensor, clips: usize) -> Result<Tensor> {
    let (n, d) = xs.dims2()?;
    if clips == 0 || n % clips != 0 {
        candle_core::bail!("{n} rows are not a whole number of {clips}-clip groups");
    }
    xs.reshape((n / clips, clips, d))?.mean(1)
}

/// The towers of one checkpoint; any subset may be loaded.
#[derive(Debug, Clone)]
pub struct ImageBindModel {
    towers: Vec<TowerModel>,
    pub config: ImageBindConfig,
}

impl ImageBindModel {
    /// Loads the towers asked for (each must be in the config).
    pub fn load(vb: VarBuilder, config: &ImageBindConfig, towers: &[Tower]) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let mut loaded = Vec::new();
        for &t in Tower::ALL.iter().filter(|t| towers.contains(t)) {
            loaded.push(TowerModel::new(vb.clone(), t, config)?);
        }
        Ok(Self {
            towers: loaded,
            config: config.clone(),
        })
    }

    pub fn tower(&self, t: Tower) -> Option<&TowerModel> {
        self.towers.iter().find(|m| m.tower == t)
    }

    pub fn towers(&self) -> impl Iterator<Item = Tower> + '_ {
        self.towers.iter().map(|t| t.tower)
    }

    fn get(&self, t: Tower) -> Result<&TowerModel> {
        self.tower(t)
            .ok_or_else(|| candle_core::Error::Msg(format!("the {t:?} tower is not loaded")))
    }

    /// What the official `ImageBindModel.forward` returns for a non-text modality: per clip the
    /// normalised head output times the logit scale, averaged over each input's `clips`
    /// consecutive rows (1 for single inputs, 3 audio clips, video clips).
    pub fn forward(&self, t: Tower, xs: &Tensor, clips: usize) -> Result<Tensor> {
        let m = self.get(t)?;
        mean_over_clips(&m.postprocess(&m.head(xs)?)?, clips)
    }

    /// The official output for texts.
    pub fn forward_text(&self, ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        let m = self.get(Tower::Text)?;
        m.postprocess(&m.text_head(ids, eos_positions)?)
    }
}
