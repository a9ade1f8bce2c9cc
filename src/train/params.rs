//! The trainable parameter set of an ImageBind-architecture model: one [`VarMap`] under the
//! official key names, its seeded initialisation, the split into towers, and the rebuild of the
//! inference model from it.
//!
//! The inference model transforms some weights while it loads: the attention scale is folded
//! into new query rows (`mul` and `cat` in `FusedSelfAttention::new`) and the logit scale is read
//! out as a plain number. Such derived tensors are copies, so a model built before an optimiser
//! step keeps the old values in them. [`Trainable::build`] therefore rebuilds the model from the
//! VarMap at every step: the load-time operations are then recorded in the autograd graph, the
//! gradients flow through them back to the [`Var`]s, and no derived tensor is ever stale.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::embed::imagebind::model::{ImageBindModel, Tower};
use crate::embed::imagebind::ImageBindConfig;

/// Prefix of the loss temperatures, which live in the VarMap beside the model's weights (and are
/// ignored by the inference loader, which reads only the names it knows).
pub const TEMPERATURE_PREFIX: &str = "contrastive.log_logit_scale";

/// The learned temperature of stage 1 (image-text), initialised at ln(1/0.07) as CLIP.
pub fn stage1_temperature() -> String {
    format!("{TEMPERATURE_PREFIX}.vision_text")
}

/// The learned temperature of a stage-2 tower against images.
pub fn bind_temperature(t: Tower) -> String {
    format!("{TEMPERATURE_PREFIX}.{}", t.keys().name)
}

/// The official post-processor scale of a tower (`LearnableLogitScaling` in
/// `imagebind_model.py`): 1/0.07 for text (learnable there), fixed 20 for audio, 5 for depth,
/// 10 for thermal, 5 for IMU; vision has none.
pub fn official_logit_scale(t: Tower) -> Option<f64> {
    match t {
        Tower::Vision => None,
        Tower::Text => Some(1.0 / 0.07),
        Tower::Audio => Some(20.0),
        Tower::Depth => Some(5.0),
        Tower::Thermal => Some(10.0),
        Tower::Imu => Some(5.0),
    }
}

/// Standard deviation of the weight, embedding, position-embedding and class-token init.
pub const INIT_STD: f64 = 0.02;
/// Initial layer-scale gamma of the official `BlockWithMasking` (from CaiT).
pub const LAYER_SCALE_INIT: f64 = 1e-4;

/// An ImageBind-architecture model's weights as [`Var`]s, for the towers being trained.
pub struct Trainable {
    varmap: VarMap,
    config: ImageBindConfig,
    towers: Vec<Tower>,
    device: Device,
}

impl Trainable {
    /// Creates every weight of `towers` (each must be in `config`) and the loss temperatures,
    /// initialised from `seed` (see [`init_value`]). The names and shapes come from one build of
    /// the inference model over an empty VarMap: `VarBuilder::get` on a VarMap creates a missing
    /// variable from the layer's init hint (zeros when it gives none, with an unseeded RNG
    /// otherwise), so every variable is then overwritten here, in name order, from one seeded RNG.
    pub fn init(
        config: &ImageBindConfig,
        towers: &[Tower],
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        ImageBindModel::load(
            VarBuilder::from_varmap(&varmap, DType::F32, device),
            config,
            towers,
        )?;
        let mut towers: Vec<Tower> = towers.to_vec();
        towers.sort_by_key(|&t| t as usize);
        towers.dedup();
        let mut temps = Vec::new();
        if towers.contains(&Tower::Vision) && towers.contains(&Tower::Text) {
            temps.push(stage1_temperature());
        }
        for &t in &towers {
            if !matches!(t, Tower::Vision | Tower::Text) {
                temps.push(bind_temperature(t));
            }
        }
        for name in temps {
            varmap.get((), &name, candle_nn::Init::Const(0.), DType::F32, device)?;
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let v = init_value(name, var.dims(), &mut rng);
            var.set(&Tensor::from_vec(v, var.shape(), device)?)?;
        }
        drop(data);
        Ok(Self {
            varmap,
            config: config.clone(),
            towers,
            device: device.clone(),
        })
    }

    /// The inference model of the given towers, built from the current values of the Vars.
    /// Its tensors are the Vars themselves or functions of them recorded in the autograd graph.
    pub fn build(&self, towers: &[Tower]) -> Result<ImageBindModel> {
        ImageBindModel::load(
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
            &self.config,
            towers,
        )
    }

    /// Sets every variable that `path` (a safetensors file) holds under the same name, e.g. the
    /// towers of an earlier stage's checkpoint; tensors of the file the model lacks are ignored.
    /// Returns how many variables were set and how many kept their values. Fails when a shape
    /// differs or when the file sets nothing.
    pub fn load_present(&mut self, path: &std::path::Path) -> Result<(usize, usize)> {
        let file = candle_core::safetensors::load(path, &self.device)?;
        let data = self.varmap.data().lock().unwrap();
        let mut loaded = 0;
        for (name, var) in data.iter() {
            let Some(t) = file.get(name) else { continue };
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "{}: {name} has shape {:?}, the model {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(DType::F32)?)?;
            loaded += 1;
        }
        if loaded == 0 {
            candle_core::bail!("{} holds none of the model's weights", path.display());
        }
        Ok((loaded, data.len() - loaded))
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn varmap_mut(&mut self) -> &mut VarMap {
        &mut self.varmap
    }

    pub fn config(&self) -> &ImageBindConfig {
        &self.config
    }

    pub fn towers(&self) -> &[Tower] {
        &self.towers
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One variable by name.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().unwrap().get(name).cloned()
    }

    /// Every variable, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The weights a contrastive loss trains in a tower: its preprocessor (stem, class token,
    /// position embedding), trunk and head, sorted by name. The post-processor's logit scale is
    /// not among them: the losses normalise the embeddings and use their own temperatures.
    pub fn tower_vars(&self, t: Tower) -> Vec<(String, Var)> {
        let name = t.keys().name;
        let prefixes = [
            format!("modality_preprocessors.{name}."),
            format!("modality_trunks.{name}."),
            format!("modality_heads.{name}."),
        ];
        self.named_vars()
            .into_iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str())))
            .collect()
    }

    /// Every weight of a tower, post-processor included.
    pub fn all_tower_vars(&self, t: Tower) -> Vec<(String, Var)> {
        let post = format!("modality_postprocessors.{}.", t.keys().name);
        let mut v = self.tower_vars(t);
        v.extend(
            self.named_vars()
                .into_iter()
                .filter(|(k, _)| k.starts_with(&post)),
        );
        v
    }
}

/// Initial values of one variable, by its official name and shape: zeros for biases, ones and
/// zeros for LayerNorm weight and bias (the rank-1 `weight`s), the official post-processor
/// scales (`log_logit_scale`), ln(1/0.07) for the stage-1 temperature and the official scale for
/// a stage-2 temperature, [`LAYER_SCALE_INIT`] for layer-scale gammas, and a normal of standard
/// deviation [`INIT_STD`] truncated at two deviations for everything else (projections, convs,
/// token embedding, position embeddings, class tokens, `bias_k`/`bias_v`).
pub fn init_value(name: &str, dims: &[usize], rng: &mut StdRng) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let constant = |x: f64| vec![x as f32; n];
    if name.starts_with(TEMPERATURE_PREFIX) {
        let tower = Tower::ALL.iter().find(|t| leaf == t.keys().name);
        let s = tower
            .and_then(|&t| official_logit_scale(t))
            .unwrap_or(1.0 / 0.07);
        return constant(s.ln());
    }
    if leaf == "log_logit_scale" {
        let tower = Tower::ALL
            .iter()
            .find(|t| name.starts_with(&format!("modality_postprocessors.{}.", t.keys().name)));
        let s = tower.and_then(|&t| official_logit_scale(t)).unwrap_or(1.0);
        return constant(s.ln());
    }
    if leaf.starts_with("layer_scale_gamma") {
        return constant(LAYER_SCALE_INIT);
    }
    if leaf == "bias" || leaf == "in_proj_bias" {
        return constant(0.0);
    }
    if leaf == "weight" && dims.len() == 1 {
        return constant(1.0);
    }
    (0..n)
        .map(|_| truncated_normal(rng) * INIT_STD as f32)
        .collect()
}

/// A standard normal sample redrawn until it lies within two deviations (Box-Muller).
fn truncated_normal(rng: &mut StdRng) -> f32 {
    loop {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        if z.abs() <= 2.0 {
            return z as f32;
        }
    }
}
