//! Training recipes (TOML) and the runner that carries one out: stage 1 (image-text), then stage
//! 2 for each listed modality in turn, with a checkpoint per stage after every epoch and resume
//! from it. The only data source so far is `synthetic` (seeded random inputs of the model's
//! geometry, paired by index): it exercises the whole loop end to end.
//!
//! ```toml
//! seed = 0
//! model = "config.json"       # ImageBind sizes, relative to the recipe file
//! output = "runs/tiny"        # one checkpoint directory per stage inside
//! device = "cpu"              # cpu, auto or cuda:N
//!
//! [data]
//! kind = "synthetic"
//! pairs = 64
//! groups = 4                  # labels for `negatives = "grouped"`: item i has label i % groups
//!
//! [stage1]
//! epochs = 10
//! batch_size = 8
//! lr = 1e-3
//! min_lr = 1e-5
//! warmup_steps = 5
//! negatives = "random"        # random, grouped or mined
//!
//! [stage2]
//! modalities = ["audio", "imu"]
//! epochs = 10
//! batch_size = 8
//! lr = 1e-3
//! negatives = "mined"
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::checkpoint::{self, recipe_hash, CheckpointMeta, META_FILE};
use super::params::Trainable;
use super::sampler::{BatchSampler, Negatives};
use super::schedule::LrSchedule;
use super::trainer::{Batch, Paired, Stage, TrainOptions, Trainer};
use crate::embed::imagebind::model::Tower;
use crate::embed::imagebind::ImageBindConfig;
use crate::embed::{select_device, DeviceSpec};

/// A training recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub seed: u64,
    /// The model's `config.json`, relative to the recipe file.
    pub model: PathBuf,
    /// Checkpoint directory (one sub-directory per stage), relative to the recipe file.
    pub output: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    pub data: DataRecipe,
    #[serde(default)]
    pub stage1: Option<StageRecipe>,
    #[serde(default)]
    pub stage2: Option<StageRecipe>,
}

fn default_device() -> String {
    "cpu".into()
}

/// Where the pairs come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// Only `synthetic` so far.
    pub kind: String,
    pub pairs: usize,
    /// Number of labels of the synthetic items (item `i` has label `i % groups`).
    #[serde(default = "one")]
    pub groups: usize,
}

fn one() -> usize {
    1
}

/// Negative sampling of a stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativesRecipe {
    #[default]
    Random,
    Grouped,
    Mined,
}

/// One stage's optimisation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecipe {
    /// Stage 2 only: the towers to bind to images, in order (audio, depth, thermal, imu).
    #[serde(default)]
    pub modalities: Vec<String>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub negatives: NegativesRecipe,
}

fn default_weight_decay() -> f64 {
    0.05
}

fn default_clip() -> Option<f64> {
    Some(1.0)
}

impl Recipe {
    /// Parses a recipe's TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        use figment::providers::{Format, Toml};
        let r: Recipe = figment::Figment::from(Toml::string(text))
            .extract()
            .context("reading the recipe")?;
        if r.data.kind != "synthetic" {
            bail!("data.kind must be \"synthetic\" (the only data source so far)");
        }
        if r.data.pairs < 2 || r.data.groups == 0 {
            bail!("data needs at least two pairs and one group");
        }
        if let Some(s) = &r.stage1 {
            if !s.modalities.is_empty() {
                bail!("stage1 trains vision and text: it takes no `modalities`");
            }
        }
        if let Some(s) = &r.stage2 {
            if s.modalities.is_empty() {
                bail!("stage2 needs `modalities`");
            }
            for m in &s.modalities {
                bind_tower(m)?;
            }
        }
        for s in r.stage1.iter().chain(&r.stage2) {
            if s.batch_size < 2 || s.epochs == 0 || s.lr.is_nan() || s.lr <= 0.0 {
                bail!("each stage needs epochs > 0, batch_size >= 2 and lr > 0");
            }
        }
        Ok(r)
    }
}

fn bind_tower(name: &str) -> anyhow::Result<Tower> {
    match name {
        "audio" => Ok(Tower::Audio),
        "depth" => Ok(Tower::Depth),
        "thermal" => Ok(Tower::Thermal),
        "imu" => Ok(Tower::Imu),
        other => bail!("stage2 binds audio, depth, thermal or imu, not `{other}`"),
    }
}

/// What one stage did in this run.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// `stage1` or `stage2-<modality>` (also the checkpoint's sub-directory).
    pub name: String,
    /// Epochs and steps run now (0 when the checkpoint already held the whole stage).
    pub epochs_run: usize,
    pub steps_run: usize,
    /// Mean loss of the first and of the last epoch run now.
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub steps_per_sec: f64,
}

/// Runs `recipe` (whose text is `text`; relative paths start at `base`), resuming from the
/// checkpoints of the same recipe in its output directory. `log` receives one line per epoch.
pub fn run(
    recipe: &Recipe,
    text: &str,
    base: &Path,
    mut log: impl FnMut(&str),
) -> anyhow::Result<Vec<StageReport>> {
    let model_path = base.join(&recipe.model);
    let config = ImageBindConfig::from_json(
        &std::fs::read_to_string(&model_path)
            .with_context(|| format!("reading {}", model_path.display()))?,
    )
    .map_err(anyhow::Error::msg)?;
    let spec: DeviceSpec = recipe
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("device: {e}"))?;
    let device = select_device(spec)?;
    let mut stages = Vec::new();
    if let Some(s) = &recipe.stage1 {
        stages.push((Stage::ImageText, s));
    }
    if let Some(s) = &recipe.stage2 {
        for m in &s.modalities {
            stages.push((Stage::Bind(bind_tower(m)?), s));
        }
    }
    let mut towers = vec![Tower::Vision, Tower::Text];
    towers.extend(stages.iter().flat_map(|(st, _)| st.trained()));
    let mut params = Trainable::init(&config, &towers, recipe.seed, &device)?;
    let hash = recipe_hash(text);
    let output = base.join(&recipe.output);
    let mut reports = Vec::new();
    for (index, (stage, s)) in stages.into_iter().enumerate() {
        let name = match stage {
            Stage::ImageText => "stage1".to_string(),
            Stage::Bind(t) => format!("stage2-{}", t.keys().name),
        };
        let dir = output.join(&name);
        let stage_seed = recipe.seed ^ ((index as u64 + 1) << 40);
        let pool = synthetic_pool(&config, stage, recipe.data.pairs, stage_seed, &device)?;
        let n = recipe.data.pairs;
        let labels: Vec<u64> = (0..n).map(|i| (i % recipe.data.groups) as u64).collect();
        let per_epoch = n.div_ceil(s.batch_size);
        let opts = TrainOptions {
            schedule: LrSchedule {
                peak: s.lr,
                min: s.min_lr,
                warmup_steps: s.warmup_steps,
                total_steps: s.epochs * per_epoch,
            },
            weight_decay: s.weight_decay,
            max_grad_norm: s.max_grad_norm,
            ..Default::default()
        };
        let mut start_epoch = 0;
        let mut start_step = 0;
        if dir.join(META_FILE).exists() {
            let meta = checkpoint::load(&dir, &mut params)?;
            if meta.recipe_hash != hash {
                bail!(
                    "{} holds a checkpoint of another recipe; choose another output",
                    dir.display()
                );
            }
            start_epoch = meta.epoch + 1;
            start_step = meta.step;
        }
        let mut trainer = Trainer::new(params, stage, opts)?;
        trainer.set_step_index(start_step);
        let (mut first, mut last, mut steps) = (None, None, 0);
        let started = Instant::now();
        for epoch in start_epoch..s.epochs {
            let sim;
            let negatives = match s.negatives {
                NegativesRecipe::Random => Negatives::Random,
                NegativesRecipe::Grouped => Negatives::Grouped(&labels),
                NegativesRecipe::Mined => {
                    sim = trainer.pool_similarity(&pool, 64)?;
                    Negatives::Mined(&sim)
                }
            };
            let mut sampler = BatchSampler::new(s.batch_size, stage_seed ^ epoch as u64);
            let (mut sum, mut count, mut lr, mut build, mut secs) =
                (0f64, 0usize, 0f64, 0f64, 0f64);
            for batch in sampler.epoch(n, negatives) {
                let st = trainer.step(&pool.select(&batch)?)?;
                sum += st.loss as f64;
                count += 1;
                lr = st.lr;
                build += st.build_secs;
                secs += st.step_secs;
            }
            steps += count;
            let mean = (sum / count.max(1) as f64) as f32;
            first.get_or_insert(mean);
            last = Some(mean);
            log(&format!(
                "{name} epoch {}/{}: loss {mean:.4}, lr {lr:.2e}, step {}, {:.1} ms per step \
                 ({:.2} ms rebuilding the model)",
                epoch + 1,
                s.epochs,
                trainer.step_index(),
                1e3 * secs / count.max(1) as f64,
                1e3 * build / count.max(1) as f64,
            ));
            let meta = CheckpointMeta {
                step: trainer.step_index(),
                epoch,
                seed: recipe.seed,
                recipe_hash: hash.clone(),
            };
            checkpoint::save(&dir, trainer.params(), &meta)?;
        }
        reports.push(StageReport {
            name,
            epochs_run: s.epochs.saturating_sub(start_epoch),
            steps_run: steps,
            first_loss: first,
            last_loss: last,
            steps_per_sec: steps as f64 / started.elapsed().as_secs_f64().max(1e-9),
        });
        params = trainer.into_params();
    }
    Ok(reports)
}

/// `n` seeded random pairs for a stage, in the model's input geometry: images with token
/// sequences (end-of-text at the last position) in stage 1, images with the stage-2 tower's
/// input otherwise.
pub fn synthetic_pool(
    config: &ImageBindConfig,
    stage: Stage,
    n: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Batch> {
    let i = &config.inputs;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut uniform = |shape: &[usize]| -> candle_core::Result<Tensor> {
        let len: usize = shape.iter().product();
        let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, device)
    };
    let images = uniform(&[n, 3, i.image_size, i.image_size])?;
    let paired = match stage {
        Stage::ImageText => {
            let seq = i.context_length;
            let mut rng = StdRng::seed_from_u64(seed ^ 1);
            let ids: Vec<u32> = (0..n * seq)
                .map(|k| {
                    if k % seq == seq - 1 {
                        (i.vocab_size - 1) as u32
                    } else {
                        rng.random_range(0..i.vocab_size.max(2) - 1) as u32
                    }
                })
                .collect();
            Paired::Text {
                ids: Tensor::from_vec(ids, (n, seq), device)?,
                eos: vec![seq - 1; n],
            }
        }
        Stage::Bind(t) => Paired::Other(match t {
            Tower::Audio => uniform(&[n, 1, i.audio_num_mel_bins, i.audio_target_len])?,
            Tower::Depth | Tower::Thermal => uniform(&[n, 1, i.image_size, i.image_size])?,
            Tower::Imu => uniform(&[n, i.imu_channels, i.imu_len])?,
            _ => candle_core::bail!("stage 2 does not bind {t:?}"),
        }),
    };
    Ok(Batch { images, paired })
}
