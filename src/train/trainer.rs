//! One optimisation step of either training stage: rebuild the model from the Vars, forward the
//! paired batch, symmetric InfoNCE, backward, global-norm gradient clipping, AdamW with the
//! scheduled learning rate. Freezing is explicit: only the trained towers' Vars (and the stage's
//! temperature) are given to the optimiser, and the frozen image tower's output is detached so
//! that no gradient is computed for it at all. Stage 2 can also train the image tower
//! ([`ImageTower::Trained`], the ablation of ImageBind's freezing).

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::loss::{info_nce, similarity_matrix};
use super::params::{bind_temperature, stage1_temperature, Trainable};
use super::schedule::LrSchedule;
use crate::embed::imagebind::model::{ImageBindModel, Tower};

/// The two training stages of ImageBind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1, CLIP-style: vision and text towers trained together on image-text pairs.
    ImageText,
    /// Stage 2: the vision tower frozen, this tower (audio, depth, thermal or IMU) trained on
    /// pairs with images.
    Bind(Tower),
}

impl Stage {
    /// Towers the stage runs.
    pub fn towers(self) -> Vec<Tower> {
        match self {
            Stage::ImageText => vec![Tower::Vision, Tower::Text],
            Stage::Bind(t) => vec![Tower::Vision, t],
        }
    }

    /// Towers whose weights the stage updates.
    pub fn trained(self) -> Vec<Tower> {
        match self {
            Stage::ImageText => vec![Tower::Vision, Tower::Text],
            Stage::Bind(t) => vec![t],
        }
    }

    /// Name of the stage's learned temperature in the VarMap.
    pub fn temperature(self) -> String {
        match self {
            Stage::ImageText => stage1_temperature(),
            Stage::Bind(t) => bind_temperature(t),
        }
    }
}

/// Whether stage 2 updates the image tower. ImageBind keeps it frozen, so that every bound
/// modality lands in the space the text tower was aligned with; training it as well is the
/// ablation. Stage 1 always trains it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageTower {
    #[default]
    Frozen,
    Trained,
}

/// Optimiser settings of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub schedule: LrSchedule,
    /// Decoupled weight decay of AdamW, applied to projection, conv and embedding matrices only
    /// (not to biases, LayerNorms, position embeddings, class tokens or temperatures).
    pub weight_decay: f64,
    /// Clip the global L2 norm of the trained gradients to this value.
    pub max_grad_norm: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            schedule: LrSchedule::constant(1e-3),
            weight_decay: 0.05,
            max_grad_norm: Some(1.0),
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
        }
    }
}

/// The partner of the images in a batch of pairs.
#[derive(Debug, Clone)]
pub enum Paired {
    /// `[b, seq]` u32 token ids, pooled at `eos` (one position per row).
    Text { ids: Tensor, eos: Vec<usize> },
    /// The preprocessed input of the stage-2 tower (see `TowerModel::head`).
    Other(Tensor),
}

/// `b` pairs: row `i` of `images` (`[b, 3, h, w]`, or in stage 2 the frozen image tower's
/// head outputs `[b, out_dim]`) goes with row `i` of `paired`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub paired: Paired,
}

impl Batch {
    /// Rows `start..start + len` of every input.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        self.select_with(
            |t| t.narrow(0, start, len),
            &(start..start + len).collect::<Vec<_>>(),
        )
    }

    /// The pairs at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Batch> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::new(idx.as_slice(), self.images.device())?;
        self.select_with(|t| t.index_select(&idx, 0), indices)
    }

    fn select_with(
        &self,
        f: impl Fn(&Tensor) -> Result<Tensor>,
        indices: &[usize],
    ) -> Result<Batch> {
        let paired = match &self.paired {
            Paired::Text { ids, eos } => Paired::Text {
                ids: f(ids)?,
                eos: indices.iter().map(|&i| eos[i]).collect(),
            },
            Paired::Other(x) => Paired::Other(f(x)?),
        };
        Ok(Batch {
            images: f(&self.images)?,
            paired,
        })
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// 0-based index of the step.
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds spent rebuilding the model from the Vars.
    pub build_secs: f64,
    /// Seconds of the whole step.
    pub step_secs: f64,
}

/// Trains one stage of a [`Trainable`].
pub struct Trainer {
    params: Trainable,
    stage: Stage,
    opts: TrainOptions,
    decay: AdamW,
    no_decay: AdamW,
    trained: Vec<(String, Var)>,
    image: ImageTower,
    step: usize,
}

fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2
        && !["pos_embed", "cls_token", "bias_k", "bias_v"]
            .iter()
            .any(|k| name.ends_with(k))
}

impl Trainer {
    /// A trainer of `stage`; in stage 2 the image tower is frozen.
    pub fn new(params: Trainable, stage: Stage, opts: TrainOptions) -> Result<Self> {
        Self::with_image_tower(params, stage, opts, ImageTower::Frozen)
    }

    /// A trainer of `stage` that, in stage 2, freezes or trains the image tower as `image`
    /// says. A stage-2 trainer with the image tower trained needs batches of images
    /// (`[b, 3, h, w]`), not precomputed head outputs.
    pub fn with_image_tower(
        params: Trainable,
        stage: Stage,
        opts: TrainOptions,
        image: ImageTower,
    ) -> Result<Self> {
        if let Stage::Bind(Tower::Vision | Tower::Text) = stage {
            candle_core::bail!("stage 2 binds audio, depth, thermal or IMU to frozen images");
        }
        for t in stage.towers() {
            if !params.towers().contains(&t) {
                candle_core::bail!("the {t:?} tower is not in the trainable model");
            }
        }
        let mut towers = stage.trained();
        if image == ImageTower::Trained && !towers.contains(&Tower::Vision) {
            towers.insert(0, Tower::Vision);
        }
        let mut trained: Vec<(String, Var)> = towers
            .into_iter()
            .flat_map(|t| params.tower_vars(t))
            .collect();
        let temp = stage.temperature();
        let temp_var = params
            .var(&temp)
            .ok_or_else(|| candle_core::Error::Msg(format!("no {temp} in the model")))?;
        trained.push((temp, temp_var));
        let adamw = |wd: f64, vars: Vec<Var>| {
            AdamW::new(
                vars,
                ParamsAdamW {
                    lr: opts.schedule.lr(0),
                    beta1: opts.beta1,
                    beta2: opts.beta2,
                    eps: opts.eps,
                    weight_decay: wd,
                },
            )
        };
        let (d, nd): (Vec<_>, Vec<_>) = trained.iter().partition(|(k, v)| decays(k, v));
        let decay = adamw(
            opts.weight_decay,
            d.into_iter().map(|x| x.1.clone()).collect(),
        )?;
        let no_decay = adamw(0.0, nd.into_iter().map(|x| x.1.clone()).collect())?;
        Ok(Self {
            params,
            stage,
            opts,
            decay,
            no_decay,
            trained,
            image,
            step: 0,
        })
    }

    /// Replaces the optimiser settings (the learning rate and weight decay take effect at the
    /// next step; the AdamW moments are kept).
    pub fn set_options(&mut self, opts: TrainOptions) -> Result<()> {
        self.decay.set_params(ParamsAdamW {
            lr: opts.schedule.lr(self.step),
            beta1: opts.beta1,
            beta2: opts.beta2,
            eps: opts.eps,
            weight_decay: opts.weight_decay,
        });
        self.no_decay.set_params(ParamsAdamW {
            lr: opts.schedule.lr(self.step),
            beta1: opts.beta1,
            beta2: opts.beta2,
            eps: opts.eps,
            weight_decay: 0.0,
        });
        self.opts = opts;
        Ok(())
    }

    pub fn params(&self) -> &Trainable {
        &self.params
    }

    /// The weights, to continue with another stage.
    pub fn into_params(self) -> Trainable {
        self.params
    }

    pub fn params_mut(&mut self) -> &mut Trainable {
        &mut self.params
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Steps taken so far (the next step's 0-based index).
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// Sets the step counter (when resuming from a checkpoint; the schedule continues from it).
    pub fn set_step_index(&mut self, step: usize) {
        self.step = step;
    }

    /// The Vars the optimiser updates, by name.
    pub fn trained_vars(&self) -> &[(String, Var)] {
        &self.trained
    }

    /// The model of the stage's towers, rebuilt from the current Vars.
    pub fn build(&self) -> Result<ImageBindModel> {
        self.params.build(&self.stage.towers())
    }

    /// Both sides' head outputs `[b, out_dim]`; the frozen image side is detached in stage 2.
    /// Rank-2 `images` are taken as the image tower's head outputs already (see
    /// [`Self::image_heads`]), which only a frozen image tower allows.
    pub fn embed(&self, model: &ImageBindModel, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let frozen = matches!(self.stage, Stage::Bind(_)) && self.image == ImageTower::Frozen;
        let mut images = if batch.images.rank() == 2 {
            if !frozen {
                candle_core::bail!("training the image tower needs images, not head outputs");
            }
            batch.images.clone()
        } else {
            model
                .tower(Tower::Vision)
                .ok_or_else(|| candle_core::Error::Msg("no vision tower".into()))?
                .head(&batch.images)?
        };
        let other = match (self.stage, &batch.paired) {
            (Stage::ImageText, Paired::Text { ids, eos }) => model
                .tower(Tower::Text)
                .ok_or_else(|| candle_core::Error::Msg("no text tower".into()))?
                .text_head(ids, eos)?,
            (Stage::Bind(t), Paired::Other(x)) => {
                if frozen {
                    images = images.detach();
                }
                model
                    .tower(t)
                    .ok_or_else(|| candle_core::Error::Msg(format!("no {t:?} tower")))?
                    .head(x)?
            }
            _ => candle_core::bail!("the batch does not match the stage {:?}", self.stage),
        };
        Ok((images, other))
    }

    /// The stage's loss on a batch, for a model built by [`Self::build`].
    pub fn loss(&self, model: &ImageBindModel, batch: &Batch) -> Result<Tensor> {
        let (images, other) = self.embed(model, batch)?;
        let temp = &self.trained.last().expect("the temperature is trained").1;
        info_nce(&images, &other, temp.as_tensor())
    }

    /// Cosine similarities `[n * n]` of the images and their partners over a pool of `n` pairs,
    /// embedded by the current model in chunks of `chunk` rows without gradients: the input of
    /// [`super::sampler::Negatives::Mined`].
    pub fn pool_similarity(&self, pool: &Batch, chunk: usize) -> Result<Vec<f32>> {
        let model = self.build()?;
        let n = pool.images.dim(0)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(n - start);
            let (x, y) = self.embed(&model, &pool.narrow(start, len)?)?;
            a.push(x.detach());
            b.push(y.detach());
        }
        similarity_matrix(&Tensor::cat(&a, 0)?, &Tensor::cat(&b, 0)?)
    }

    /// The image tower's head outputs `[n, out_dim]` of `[n, 3, h, w]` images, in chunks of
    /// `chunk` rows, detached. In stage 2 the image tower is frozen, so these can be computed
    /// once and stand in for the images of every batch ([`Batch::images`] of rank 2).
    pub fn image_heads(&self, images: &Tensor, chunk: usize) -> Result<Tensor> {
        let model = self.params.build(&[Tower::Vision])?;
        let vision = model
            .tower(Tower::Vision)
            .ok_or_else(|| candle_core::Error::Msg("no vision tower".into()))?;
        let n = images.dim(0)?;
        let mut out = Vec::new();
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(n - start);
            out.push(vision.head(&images.narrow(0, start, len)?)?.detach());
        }
        Tensor::cat(&out, 0)
    }

    /// Loss and gradients of a batch, without updating anything.
    pub fn backward(&self, batch: &Batch) -> Result<(f32, GradStore)> {
        let model = self.build()?;
        let loss = self.loss(&model, batch)?;
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    /// One optimisation step on a batch.
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let start = Instant::now();
        let model = self.build()?;
        let build_secs = start.elapsed().as_secs_f64();
        let loss = self.loss(&model, batch)?;
        let mut grads = loss.backward()?;
        let vars: Vec<Var> = self.trained.iter().map(|(_, v)| v.clone()).collect();
        let grad_norm = clip_grad_norm(&mut grads, &vars, self.opts.max_grad_norm)?;
        let lr = self.opts.schedule.lr(self.step);
        self.decay.set_learning_rate(lr);
        self.no_decay.set_learning_rate(lr);
        self.decay.step(&grads)?;
        self.no_decay.step(&grads)?;
        let stats = StepStats {
            step: self.step,
            loss: loss.to_scalar::<f32>()?,
            lr,
            grad_norm,
            build_secs,
            step_secs: start.elapsed().as_secs_f64(),
        };
        self.step += 1;
        Ok(stats)
    }
}

/// Global L2 norm of the gradients of `vars`; when `max_norm` is given and the norm exceeds it,
/// those gradients are scaled in `grads` so that their global norm is `max_norm`. Returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if let Some(max) = max_norm {
        if norm > max {
            let factor = max / (norm + 1e-6);
            for v in vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    let scaled = (g * factor)?;
                    grads.insert(v.as_tensor(), scaled);
                }
            }
        }
    }
    Ok(norm)
}
