//! Official ImageBind checkpoints: reading the PyTorch state dict (`imagebind_huge.pth`) and
//! converting it to omnibind's model directory (`model.safetensors` + `config.json`).
//!
//! The official file is `torch.save(model.state_dict())`; the tensors keep their official names
//! (the one table of names is [`super::model::KEYS`]). [`canonical_key`] is the single place
//! where other spellings of the same checkpoint are mapped onto those names: a `module.` prefix
//! left by `DistributedDataParallel`, and a state dict nested under `model` or `state_dict`.
//! Keys of towers that are not wanted are dropped while reading, so a deployment that serves
//! only some modalities never holds the others in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::ImageBindConfig;
use super::model::{ImageBindModel, Tower};
use crate::embed::EmbedError;

/// The official name of a checkpoint key, or `None` for keys that are not model weights.
pub fn canonical_key(key: &str) -> Option<&str> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    key.starts_with("modality_").then_some(key)
}

/// The tower a (canonical) key belongs to.
pub fn tower_of_key(key: &str) -> Option<Tower> {
    let name = key.split('.').nth(1)?;
    Tower::ALL.into_iter().find(|t| t.keys().name == name)
}

/// Reads an official `.pth` state dict, keeping the tensors of `towers` under their official
/// names (stored dtype, on the CPU).
pub fn read_pth(path: &Path, towers: &[Tower]) -> Result<HashMap<String, Tensor>, EmbedError> {
    let bad = |e: candle_core::Error| {
        EmbedError::Config(format!(
            "{}: not a readable PyTorch checkpoint: {e}",
            path.display()
        ))
    };
    let mut all = candle_core::pickle::read_all(path).map_err(bad)?;
    if !all.iter().any(|(k, _)| canonical_key(k).is_some()) {
        for key in ["model", "state_dict"] {
            if let Ok(nested) = candle_core::pickle::read_all_with_key(path, Some(key)) {
                if nested.iter().any(|(k, _)| canonical_key(k).is_some()) {
                    all = nested;
                    break;
                }
            }
        }
    }
    let mut out = HashMap::new();
    for (k, t) in all {
        let Some(name) = canonical_key(&k) else {
            continue;
        };
        if tower_of_key(name).is_some_and(|tw| towers.contains(&tw)) {
            out.insert(name.to_string(), t);
        }
    }
    if out.is_empty() {
        return Err(EmbedError::Config(format!(
            "{} holds no ImageBind weights (no `modality_*` keys)",
            path.display()
        )));
    }
    Ok(out)
}

/// Embedding width and block count of a tower, read from the tensors' shapes.
fn tower_sizes(tensors: &HashMap<String, Tensor>, t: Tower) -> Option<(usize, usize)> {
    let k = t.keys();
    let pos = tensors.get(&format!(
        "modality_preprocessors.{}.{}",
        k.name, k.pos_embed
    ))?;
    let dim = *pos.dims().last()?;
    let prefix = format!("modality_trunks.{}.blocks.", k.name);
    let blocks = tensors
        .keys()
        .filter_map(|key| {
            key.strip_prefix(&prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |b| b + 1);
    Some((dim, blocks))
}

/// The configuration of a checkpoint whose towers have the official `imagebind_huge` sizes
/// (attention head counts cannot be read from shapes, so other sizes need a config file).
pub fn infer_config(tensors: &HashMap<String, Tensor>) -> Result<ImageBindConfig, EmbedError> {
    let huge = ImageBindConfig::huge();
    let mut config = huge.clone();
    let mut found = Vec::new();
    for t in Tower::ALL {
        match tower_sizes(tensors, t) {
            None => t.remove_from(&mut config),
            Some((dim, blocks)) => {
                let want = t.trunk_config(&huge).expect("huge has every tower");
                if (dim, blocks) != (want.embed_dim, want.num_blocks) {
                    return Err(EmbedError::Config(format!(
                        "the {} tower is {dim} wide with {blocks} blocks, not imagebind_huge's \
                         {} x {}; pass --config with this checkpoint's sizes (head counts cannot \
                         be read from the weights)",
                        t.keys().name,
                        want.embed_dim,
                        want.num_blocks
                    )));
                }
                found.push(t);
            }
        }
    }
    if found.is_empty() {
        return Err(EmbedError::Config(
            "no tower found in the checkpoint".into(),
        ));
    }
    Ok(config)
}

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Towers to keep (all found by default).
    pub towers: Option<Vec<Tower>>,
    /// Sizes, when the checkpoint is not `imagebind_huge`.
    pub config: Option<ImageBindConfig>,
    /// Stored precision of the output (the checkpoint's own when `None`).
    pub dtype: Option<DType>,
    /// A CLIP `tokenizer.json` to copy next to the weights (text needs one).
    pub tokenizer: Option<PathBuf>,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub towers: Vec<Tower>,
    pub tensors: usize,
    pub parameters: usize,
    pub bytes: u64,
}

/// Converts an official checkpoint into an omnibind model directory `out` (created; existing
/// `model.safetensors` / `config.json` are refused rather than overwritten). The result is
/// checked by building every kept tower from it before anything is written.
pub fn convert(
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, EmbedError> {
    let wanted = opts.towers.clone().unwrap_or_else(|| Tower::ALL.to_vec());
    let mut tensors = read_pth(input, &wanted)?;
    let mut config = match &opts.config {
        Some(c) => c.clone(),
        None => infer_config(&tensors)?,
    };
    // Keep only the towers that are wanted, present and configured.
    let present: Vec<Tower> = wanted
        .iter()
        .copied()
        .filter(|&t| tensors.keys().any(|k| tower_of_key(k) == Some(t)))
        .filter(|&t| t.trunk_config(&config).is_some())
        .collect();
    tensors.retain(|k, _| tower_of_key(k).is_some_and(|t| present.contains(&t)));
    if present.is_empty() {
        return Err(EmbedError::Config(
            "none of the requested towers is in the checkpoint".into(),
        ));
    }
    for t in Tower::ALL.into_iter().filter(|t| !present.contains(t)) {
        t.remove_from(&mut config);
    }
    config.validate().map_err(EmbedError::Config)?;
    if let Some(dtype) = opts.dtype {
        for t in tensors.values_mut() {
            if t.dtype().is_float() {
                *t = t.to_dtype(dtype)?;
            }
        }
    }
    // Every kept tower must build from the converted tensors.
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &candle_core::Device::Cpu);
    ImageBindModel::load(vb, &config, &present)?;

    std::fs::create_dir_all(out).map_err(|e| EmbedError::io(out, e))?;
    let weights = out.join("model.safetensors");
    let config_path = out.join("config.json");
    for p in [&weights, &config_path] {
        if p.exists() {
            return Err(EmbedError::Config(format!(
                "{} exists; remove it or choose another directory",
                p.display()
            )));
        }
    }
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    let count = tensors.len();
    candle_core::safetensors::save(&tensors, &weights)?;
    std::fs::write(&config_path, config.to_json()).map_err(|e| EmbedError::io(&config_path, e))?;
    if let Some(tok) = &opts.tokenizer {
        let dst = out.join("tokenizer.json");
        std::fs::copy(tok, &dst).map_err(|e| EmbedError::io(tok, e))?;
    }
    let bytes = std::fs::metadata(&weights)
        .map_err(|e| EmbedError::io(&weights, e))?
        .len();
    Ok(ConvertReport {
        towers: present,
        tensors: count,
        parameters,
        bytes,
    })
}
