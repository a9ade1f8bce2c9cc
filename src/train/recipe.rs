//! Training recipes (TOML) and the runner that carries one out: stage 1 (image-text), then stage
//! 2 for each listed modality in turn, with a checkpoint per stage after every epoch and resume
//! from it.
//!
//! Two data sources:
//! - `openmoji`: the `train` split of a dataset directory made by `omnibind data openmoji`
//!   (`path`, relative to the recipe or absolute; `omnibind train --data DIR` overrides it).
//!   Stage 1 pairs images (augmented unless `augment = false`) with captions drawn per epoch;
//!   stage 2 pairs images with audio clips, depth maps, thermal images or IMU traces; labels
//!   are the emoji subgroups. Text is tokenised with `tokenizer` (relative to the recipe;
//!   default: `tokenizer.json` beside the model's `config.json`), which is copied into every
//!   checkpoint so that it loads as an inference model. See [`super::openmoji`].
//! - `synthetic`: seeded random inputs of the model's geometry, paired by index (`pairs`,
//!   `groups`): it exercises the whole loop end to end.
//!
//! ```toml
//! seed = 0
//! model = "config.json"       # ImageBind sizes, relative to the recipe file
//! output = "runs/tiny"        # one checkpoint directory per stage inside
//! device = "cpu"              # cpu, auto or cuda:N
//! # init = "runs/base/stage1" # start from these weights (e.g. stage 2 after a stage 1)
//!
//! [data]
//! kind = "openmoji"
//! path = "../data/openmoji"   # relative to the recipe file, or absolute
//! # tokenizer = "tokenizer.json"
//! # augment = true            # stage-1 random crop and colour jitter
//! # annotation_captions = 0.75 # share of caption draws from the annotation's captions
//! # kind = "synthetic"        # instead: pairs = 64, groups = 4 (item i has label i % groups)
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
//! # freeze_image = false      # also train the image tower (ablation; default: frozen)
//! modality_epochs = { imu = 40 }  # in place of `epochs` for some modalities
//! ```
//!
//! [`RunOptions`] override the data directory and cut every stage after a number of steps (to
//! time a recipe), and log the mean loss every few steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::checkpoint::{self, recipe_hash, CheckpointMeta, META_FILE};
use super::openmoji::{Augment, BindPairs, FixedPairs, OpenMoji, PairSource};
use super::params::Trainable;
use super::sampler::{BatchSampler, Negatives};
use super::schedule::LrSchedule;
use super::trainer::{Batch, ImageTower, Paired, Stage, TrainOptions, Trainer};
use crate::embed::imagebind::model::Tower;
use crate::embed::imagebind::ImageBindConfig;
use crate::embed::preprocess::text::TextTokenizer;
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
    /// A checkpoint or model directory (relative to the recipe file) whose `model.safetensors`
    /// initialises the weights it holds before the first stage, e.g. a finished stage 1 for a
    /// recipe of stage 2 only; the other weights keep their seeded initialisation.
    #[serde(default)]
    pub init: Option<PathBuf>,
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
    /// `openmoji` or `synthetic`.
    pub kind: String,
    /// openmoji: the dataset directory, relative to the recipe file or absolute.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// openmoji: the CLIP `tokenizer.json`, relative to the recipe file (default:
    /// `tokenizer.json` beside the model's `config.json`).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// openmoji: stage-1 image augmentation ([`super::openmoji::Augment`]).
    #[serde(default = "yes")]
    pub augment: bool,
    /// openmoji: share of stage-1 caption draws taken from the captions that contain the
    /// annotation (the rest draw from all captions, tag captions included).
    #[serde(default = "default_annotation_captions")]
    pub annotation_captions: f64,
    /// synthetic: number of pairs.
    #[serde(default)]
    pub pairs: usize,
    /// synthetic: number of labels (item `i` has label `i % groups`).
    #[serde(default = "one")]
    pub groups: usize,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn default_annotation_captions() -> f64 {
    0.75
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
    /// Stage 2 only: epochs of some modalities in place of `epochs` (e.g. `{ imu = 100 }`).
    #[serde(default)]
    pub modality_epochs: BTreeMap<String, usize>,
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
    /// Stage 2 only: keep the image tower frozen (the default, as ImageBind does) or train it
    /// together with each bound tower (`false`, an ablation).
    #[serde(default)]
    pub freeze_image: Option<bool>,
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
        match r.data.kind.as_str() {
            "synthetic" => {
                if r.data.pairs < 2 || r.data.groups == 0 {
                    bail!("synthetic data needs at least two pairs and one group");
                }
            }
            "openmoji" => {}
            other => bail!("data.kind must be \"openmoji\" or \"synthetic\", not `{other}`"),
        }
        if let Some(s) = &r.stage1 {
            if !s.modalities.is_empty() || !s.modality_epochs.is_empty() {
                bail!("stage1 trains vision and text: it takes no `modalities`");
            }
            if s.freeze_image.is_some() {
                bail!("stage1 trains the image tower: it takes no `freeze_image`");
            }
        }
        if let Some(s) = &r.stage2 {
            if s.modalities.is_empty() {
                bail!("stage2 needs `modalities`");
            }
            for m in &s.modalities {
                bind_tower(m)?;
            }
            for (m, &e) in &s.modality_epochs {
                if !s.modalities.contains(m) || e == 0 {
                    bail!("stage2.modality_epochs: `{m}` is not a listed modality, or 0 epochs");
                }
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

/// Progress of a run, step by step (for a progress bar).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress<'a> {
    /// A stage starts (or resumes): its name, its steps in all and those already done.
    Stage {
        name: &'a str,
        steps: usize,
        done: usize,
    },
    /// A step finished with this loss at this learning rate.
    Step { loss: f32, lr: f64 },
}

/// Receives [`Progress`].
pub type ProgressFn = std::sync::Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// Options of a run beside its recipe.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// The openmoji dataset directory in place of the recipe's `data.path`.
    pub data: Option<PathBuf>,
    /// Stop every stage after this many steps (for timing a recipe). The checkpoint written
    /// then is marked with the epoch that was cut.
    pub max_steps: Option<usize>,
    /// Log the mean loss of every `log_every` steps (0: once per epoch only).
    pub log_every: usize,
    /// Called at the start of every stage and after every step.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("data", &self.data)
            .field("max_steps", &self.max_steps)
            .field("log_every", &self.log_every)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Runs `recipe` (whose text is `text`; relative paths start at `base`), resuming from the
/// checkpoints of the same recipe in its output directory. `log` receives one line per epoch.
pub fn run(
    recipe: &Recipe,
    text: &str,
    base: &Path,
    log: impl FnMut(&str),
) -> anyhow::Result<Vec<StageReport>> {
    run_with(recipe, text, base, &RunOptions::default(), log)
}

/// [`run`] with [`RunOptions`].
pub fn run_with(
    recipe: &Recipe,
    text: &str,
    base: &Path,
    options: &RunOptions,
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
    let openmoji = if recipe.data.kind == "openmoji" {
        let dir = match (&options.data, &recipe.data.path) {
            (Some(d), _) => d.clone(),
            (None, Some(p)) => base.join(p),
            (None, None) => bail!("openmoji data needs `path` (or --data)"),
        };
        let data = OpenMoji::open(&dir, &config)?;
        log(&format!(
            "openmoji: {} train items in {}",
            data.len(),
            dir.display()
        ));
        Some(data)
    } else {
        None
    };
    let tokenizer_path = match &recipe.data.tokenizer {
        Some(t) => Some(base.join(t)),
        None => Some(model_path.with_file_name("tokenizer.json")).filter(|p| p.is_file()),
    };
    let mut towers = vec![Tower::Vision, Tower::Text];
    towers.extend(stages.iter().flat_map(|(st, _)| st.trained()));
    let mut params = Trainable::init(&config, &towers, recipe.seed, &device)?;
    if let Some(init) = &recipe.init {
        let path = base.join(init).join(checkpoint::WEIGHTS_FILE);
        let (loaded, kept) = params.load_present(&path)?;
        log(&format!(
            "init: {loaded} tensors from {}; {kept} keep their seeded values",
            path.display()
        ));
    }
    let mut hash_input = text.to_string();
    if let Some(d) = &options.data {
        hash_input.push_str(&format!("\n# data: {}", d.display()));
    }
    let hash = recipe_hash(&hash_input);
    let output = base.join(&recipe.output);
    let mut reports = Vec::new();
    for (index, (stage, s)) in stages.into_iter().enumerate() {
        let name = match stage {
            Stage::ImageText => "stage1".to_string(),
            Stage::Bind(t) => format!("stage2-{}", t.keys().name),
        };
        let dir = output.join(&name);
        let epochs = match stage {
            Stage::Bind(t) => *s.modality_epochs.get(t.keys().name).unwrap_or(&s.epochs),
            Stage::ImageText => s.epochs,
        };
        let stage_seed = recipe.seed ^ ((index as u64 + 1) << 40);
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
        if start_epoch >= epochs {
            reports.push(StageReport {
                name,
                epochs_run: 0,
                steps_run: 0,
                first_loss: None,
                last_loss: None,
                steps_per_sec: 0.0,
            });
            continue;
        }
        // The trainer is made before the pairs: stage 2 embeds its images with the frozen
        // tower once. The schedule needs the number of pairs, so it is set afterwards.
        let image_tower = if s.freeze_image == Some(false) {
            ImageTower::Trained
        } else {
            ImageTower::Frozen
        };
        let mut trainer =
            Trainer::with_image_tower(params, stage, TrainOptions::default(), image_tower)?;
        let loading = Instant::now();
        let source: Box<dyn PairSource> = match &openmoji {
            None => {
                let n = recipe.data.pairs;
                Box::new(FixedPairs {
                    pool: synthetic_pool(&config, stage, n, stage_seed, &device)?,
                    labels: (0..n).map(|i| (i % recipe.data.groups) as u64).collect(),
                })
            }
            Some(data) => match stage {
                Stage::ImageText => {
                    let path = tokenizer_path.as_ref().ok_or_else(|| {
                        anyhow::anyhow!(
                            "stage 1 needs the CLIP tokenizer: set data.tokenizer or put \
                             tokenizer.json beside the model's config.json"
                        )
                    })?;
                    let tok = TextTokenizer::from_file(path, config.inputs.context_length)?
                        .with_cleaning(config.inputs.text_cleaning);
                    let augment = recipe.data.augment.then(Augment::default);
                    Box::new(data.image_text(
                        &tok,
                        augment,
                        recipe.data.annotation_captions,
                        stage_seed,
                        &device,
                        &mut log,
                    )?)
                }
                Stage::Bind(t) => {
                    let items = data.bind_items(t);
                    if items.len() < 2 {
                        bail!("fewer than two train items have {} inputs", t.keys().name);
                    }
                    let (inputs, shape) = data.bind_inputs(t, &items, &mut log)?;
                    let mut images = data.served_images(&items, &device)?;
                    if image_tower == ImageTower::Frozen {
                        images = trainer.image_heads(&images, 64)?;
                    }
                    Box::new(BindPairs {
                        images,
                        inputs,
                        shape,
                        labels: items.iter().map(|&k| data.labels()[k]).collect(),
                        seed: stage_seed,
                    })
                }
            },
        };
        if openmoji.is_some() {
            log(&format!(
                "{name}: data ready in {:.1} s",
                loading.elapsed().as_secs_f64()
            ));
        }
        let n = source.len();
        let per_epoch = n.div_ceil(s.batch_size);
        trainer.set_options(TrainOptions {
            schedule: LrSchedule {
                peak: s.lr,
                min: s.min_lr,
                warmup_steps: s.warmup_steps,
                total_steps: epochs * per_epoch,
            },
            weight_decay: s.weight_decay,
            max_grad_norm: s.max_grad_norm,
            ..Default::default()
        })?;
        trainer.set_step_index(start_step);
        let report = |p: Progress<'_>| {
            if let Some(f) = &options.progress {
                f(p);
            }
        };
        report(Progress::Stage {
            name: &name,
            steps: epochs * per_epoch,
            done: start_step,
        });
        let (mut first, mut last, mut steps, mut epochs_run) = (None, None, 0, 0);
        let started = Instant::now();
        let mut cut = false;
        for epoch in start_epoch..epochs {
            let sim;
            let negatives = match s.negatives {
                NegativesRecipe::Random => Negatives::Random,
                NegativesRecipe::Grouped => Negatives::Grouped(source.labels()),
                NegativesRecipe::Mined => {
                    let all: Vec<usize> = (0..n).collect();
                    sim = trainer.pool_similarity(&source.batch(&all, epoch)?, 64)?;
                    Negatives::Mined(&sim)
                }
            };
            let mut sampler = BatchSampler::new(s.batch_size, stage_seed ^ epoch as u64);
            let (mut sum, mut count, mut lr, mut build, mut secs) =
                (0f64, 0usize, 0f64, 0f64, 0f64);
            let (mut window, mut window_n) = (0f64, 0usize);
            for batch in sampler.epoch(n, negatives) {
                if options.max_steps.is_some_and(|m| steps + count >= m) {
                    cut = true;
                    break;
                }
                let st = trainer.step(&source.batch(&batch, epoch)?)?;
                report(Progress::Step {
                    loss: st.loss,
                    lr: st.lr,
                });
                sum += st.loss as f64;
                count += 1;
                lr = st.lr;
                build += st.build_secs;
                secs += st.step_secs;
                window += st.loss as f64;
                window_n += 1;
                if options.log_every > 0 && window_n == options.log_every {
                    log(&format!(
                        "{name} step {}: loss {:.4} (mean of {window_n}), {:.0} ms per step",
                        st.step + 1,
                        window / window_n as f64,
                        1e3 * secs / count as f64,
                    ));
                    (window, window_n) = (0.0, 0);
                }
            }
            steps += count;
            if count == 0 {
                break;
            }
            epochs_run += 1;
            let mean = (sum / count as f64) as f32;
            first.get_or_insert(mean);
            last = Some(mean);
            log(&format!(
                "{name} epoch {}/{}: loss {mean:.4}, lr {lr:.2e}, step {}, {:.1} ms per step \
                 ({:.2} ms rebuilding the model){}",
                epoch + 1,
                epochs,
                trainer.step_index(),
                1e3 * secs / count as f64,
                1e3 * build / count as f64,
                if cut { " (cut by the step limit)" } else { "" },
            ));
            let meta = CheckpointMeta {
                step: trainer.step_index(),
                epoch,
                seed: recipe.seed,
                recipe_hash: hash.clone(),
            };
            checkpoint::save(&dir, trainer.params(), &meta)?;
            if let Some(tok) = &tokenizer_path {
                let dest = dir.join("tokenizer.json");
                if !dest.exists() {
                    std::fs::copy(tok, &dest)
                        .with_context(|| format!("copying {}", tok.display()))?;
                }
            }
            if cut {
                break;
            }
        }
        reports.push(StageReport {
            name,
            epochs_run,
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
