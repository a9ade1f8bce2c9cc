//! Training checkpoints: a directory with the weights (`model.safetensors`, every Var of the
//! VarMap under the official key names plus the loss temperatures), the model's `config.json`
//! (so the directory also loads as an inference model) and `trainer.json` (step, epoch, seed,
//! recipe hash). The recipe runner adds the CLIP `tokenizer.json` when its data has text, so
//! that the text tower serves too.
//!
//! The AdamW moments are not saved: candle's `AdamW` keeps them in private fields and has no
//! public way to read or restore them. Resuming restores the weights, temperatures and step
//! (hence the learning-rate schedule) exactly, and restarts the optimiser's moments and bias
//! correction from zero.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::params::Trainable;
use crate::embed::imagebind::convert::tower_of_key;
use crate::embed::imagebind::model::Tower;
use crate::embed::imagebind::ImageBindConfig;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const META_FILE: &str = "trainer.json";

/// Where a run stood when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Optimiser steps taken.
    pub step: usize,
    pub epoch: usize,
    pub seed: u64,
    /// [`recipe_hash`] of the recipe that produced the run.
    pub recipe_hash: String,
}

/// SHA-256 (hex) of a recipe's text.
pub fn recipe_hash(recipe: &str) -> String {
    Sha256::digest(recipe.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the checkpoint into `dir` (created if needed). Each file is written under a temporary
/// name and renamed into place, `trainer.json` last, so that an interrupted save leaves the
/// previous checkpoint's `trainer.json` and never a truncated file.
pub fn save(dir: &Path, params: &Trainable, meta: &CheckpointMeta) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = |name: &str| dir.join(format!(".{name}.tmp"));
    params
        .varmap()
        .save(tmp(WEIGHTS_FILE))
        .context("writing the weights")?;
    std::fs::rename(tmp(WEIGHTS_FILE), dir.join(WEIGHTS_FILE))?;
    for (name, text) in [
        (CONFIG_FILE, held_config(params).to_json()),
        (META_FILE, serde_json::to_string_pretty(meta)? + "\n"),
    ] {
        std::fs::write(tmp(name), text).with_context(|| format!("writing {name}"))?;
        std::fs::rename(tmp(name), dir.join(name))?;
    }
    Ok(())
}

/// The configuration of the towers whose weights `params` holds: a stage-1 run holds only the
/// vision and text towers, and its checkpoint must load as a model of those two.
fn held_config(params: &Trainable) -> ImageBindConfig {
    let data = params.varmap().data().lock().expect("varmap lock");
    let mut config = params.config().clone();
    for t in Tower::ALL {
        if !data.keys().any(|k| tower_of_key(k) == Some(t)) {
            t.remove_from(&mut config);
        }
    }
    config
}

/// Loads the checkpoint in `dir` into `params` (same config, same towers) and returns where the
/// run stood.
pub fn load(dir: &Path, params: &mut Trainable) -> anyhow::Result<CheckpointMeta> {
    let config = ImageBindConfig::from_json(&std::fs::read_to_string(dir.join(CONFIG_FILE))?)
        .map_err(anyhow::Error::msg)?;
    if config != held_config(params) {
        bail!("the checkpoint's config.json differs from the model being trained");
    }
    params
        .varmap_mut()
        .load(dir.join(WEIGHTS_FILE))
        .context("reading the weights")?;
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join(META_FILE))?)?;
    Ok(meta)
}
