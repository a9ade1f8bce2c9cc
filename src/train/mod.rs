//! Training of small ImageBind-architecture models: the trainable parameter set and its
//! initialisation ([`params`]), contrastive losses ([`loss`]), batch composition and negative
//! sampling ([`sampler`]), the learning-rate schedule ([`schedule`]), the optimisation step with
//! freezing and gradient clipping ([`trainer`]), checkpoints ([`checkpoint`]), TOML recipes with
//! the runner that carries them out ([`recipe`]) and the OpenMoji data source ([`openmoji`]).
//!
//! Two stages, as in the ImageBind paper: stage 1 trains the vision and text towers with a
//! CLIP-style symmetric InfoNCE loss; stage 2 freezes them and trains each other modality's tower
//! against the image embeddings of paired data, with a temperature per modality.
//!
//! This layer sits beside the HTTP layers, not under them: it uses [`crate::embed`] and the
//! dataset manifest of [`crate::data`] only.

pub mod checkpoint;
pub mod loss;
pub mod openmoji;
pub mod params;
pub mod recipe;
pub mod sampler;
pub mod schedule;
pub mod trainer;

pub use checkpoint::CheckpointMeta;
pub use params::Trainable;
pub use recipe::{Progress, ProgressFn, Recipe, RunOptions, StageReport};
pub use sampler::{BatchSampler, Negatives};
pub use schedule::LrSchedule;
pub use trainer::{Batch, ImageTower, Paired, Stage, StepStats, TrainOptions, Trainer};

#[cfg(test)]
mod tests;
