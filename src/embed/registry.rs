//! Loading models by name from configuration, and the helpers every model family shares:
//! finding the weight files, hashing them, and building a candle `VarBuilder` over them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::clip::ClipEncoder;
use super::device::{select_device, DeviceSpec, Precision};
use super::hub::{resolve_dir, safetensors_shards, HubOptions, ModelRef};
use super::imagebind::ImageBindEncoder;
use super::preprocess::text::TextCleaning;
use super::{EmbedError, Encoder, Modality};

/// One model to load, as written in configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    /// Name the model is served under.
    pub name: String,
    /// `builtin:NAME` (a model embedded in the binary), a directory in Hugging Face layout, or a
    /// hub id such as `openai/clip-vit-base-patch32` (see [`ModelRef`]).
    pub path: String,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub precision: Precision,
    /// Modalities to load; unset loads all the model has. Leaving one out skips its tower.
    #[serde(default)]
    pub modalities: Option<Vec<Modality>>,
    /// Largest number of items in one forward pass; larger batches are split.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default)]
    pub hub: HubOptions,
    /// The clean-up of texts before tokenisation; unset takes the model family's reference:
    /// ImageBind's `config.json` (`inputs.text_cleaning`, `ftfy` unless it says otherwise),
    /// `none` for CLIP checkpoints (transformers' fast tokenizer cleans nothing).
    #[serde(default)]
    pub text_cleaning: Option<TextCleaning>,
}

fn default_max_batch() -> usize {
    32
}

impl ModelSpec {
    /// A spec with defaults for the model at `path`, named after it.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            device: DeviceSpec::Auto,
            precision: Precision::Auto,
            modalities: None,
            max_batch: default_max_batch(),
            hub: HubOptions::default(),
            text_cleaning: None,
        }
    }
}

/// Loads a model, choosing the implementation from its `config.json`.
pub fn load_encoder(spec: &ModelSpec) -> Result<Arc<dyn Encoder>, EmbedError> {
    if spec.max_batch == 0 {
        return Err(EmbedError::Config("max_batch must be at least 1".into()));
    }
    let model = ModelRef::parse(&spec.path)?;
    if let ModelRef::Builtin(name) = &model {
        let builtin = super::builtin::get(name)?;
        let device = select_device(spec.device)?;
        let dtype = spec.precision.dtype(&device);
        return Ok(Arc::new(ImageBindEncoder::load_builtin(
            builtin, spec, &device, dtype,
        )?));
    }
    let dir = resolve_dir(&model, &spec.hub)?;
    let device = select_device(spec.device)?;
    let dtype = spec.precision.dtype(&device);
    let config_path = dir.join("config.json");
    let config = read_to_string(&config_path)?;
    let family = detect_family(&config).ok_or_else(|| {
        EmbedError::Config(format!("{}: unknown model type", config_path.display()))
    })?;
    match family {
        "clip" => {
            super::hub::check_hf_dir(&dir)?;
            Ok(Arc::new(ClipEncoder::load(&dir, spec, &device, dtype)?))
        }
        "imagebind" => Ok(Arc::new(ImageBindEncoder::load(
            &dir, spec, &device, dtype,
        )?)),
        other => Err(EmbedError::Config(format!(
            "unsupported model family `{other}`"
        ))),
    }
}

/// The model family named by a `config.json` (`model_type` or `architectures`).
pub fn detect_family(config_json: &str) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let model_type = v
        .get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    let arch_is = |name: &str| {
        v.get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(name)))
    };
    if model_type == "clip" || arch_is("CLIPModel") {
        Some("clip")
    } else if model_type == "imagebind" {
        Some("imagebind")
    } else {
        None
    }
}

/// Models loaded at start-up, by name.
#[derive(Default, Clone)]
pub struct Registry {
    models: BTreeMap<String, Arc<dyn Encoder>>,
}

impl Registry {
    /// Loads every model of `specs`; names must be unique.
    pub fn load(specs: &[ModelSpec]) -> Result<Self, EmbedError> {
        let mut reg = Registry::default();
        for spec in specs {
            if reg.models.contains_key(&spec.name) {
                return Err(EmbedError::Config(format!(
                    "model name `{}` used twice",
                    spec.name
                )));
            }
            let encoder = load_encoder(spec)?;
            tracing::info!(
                model = %spec.name,
                device = %encoder.info().device,
                precision = %encoder.info().precision,
                dim = encoder.dim(),
                "model loaded"
            );
            reg.models.insert(spec.name.clone(), encoder);
        }
        Ok(reg)
    }

    pub fn insert(&mut self, encoder: Arc<dyn Encoder>) {
        self.models.insert(encoder.name().to_string(), encoder);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Encoder>> {
        self.models.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Encoder>> {
        self.models.values()
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, EmbedError> {
    std::fs::read_to_string(path).map_err(|e| EmbedError::io(path, e))
}

/// Weight files of a model directory: `model.safetensors`, the shards of a sharded
/// checkpoint, or a PyTorch `pytorch_model.bin`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EmbedError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok(safetensors_shards(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect());
    }
    let pth = dir.join("pytorch_model.bin");
    if pth.is_file() {
        return Ok(vec![pth]);
    }
    Err(EmbedError::ModelNotFound(format!(
        "{} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        dir.display()
    )))
}

/// A `VarBuilder` over weight files (safetensors memory-mapped, or one PyTorch pickle).
pub fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EmbedError> {
    let is_pth = files.len() == 1
        && files[0]
            .extension()
            .is_some_and(|e| e == "bin" || e == "pth" || e == "pt");
    if is_pth {
        return Ok(VarBuilder::from_pth(&files[0], dtype, device)?);
    }
    // SAFETY: the files are memory-mapped read-only; they must not be modified while the model
    // is loaded, which is the documented contract of a model directory.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device)? };
    Ok(vb)
}

/// SHA-256 over the weight files, in order, as lowercase hex.
pub fn sha256_files(files: &[PathBuf]) -> Result<String, EmbedError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut f = std::fs::File::open(path).map_err(|e| EmbedError::io(path, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| EmbedError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// SHA-256 of bytes in memory (an embedded model's weights), as lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The licence a model card (`README.md`, else `MODEL_CARD.md`, with YAML front matter)
/// declares, if any.
pub fn card_license(dir: &Path) -> Option<String> {
    ["README.md", "MODEL_CARD.md"].iter().find_map(|name| {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let front = text.strip_prefix("---")?.split("\n---").next()?;
        front.lines().find_map(|l| {
            l.trim()
                .strip_prefix("license:")
                .map(|v| v.trim().trim_matches('"').to_string())
                .filter(|v| !v.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_clip_configs() {
        assert_eq!(detect_family(r#"{"model_type": "clip"}"#), Some("clip"));
        assert_eq!(
            detect_family(r#"{"architectures": ["CLIPModel"]}"#),
            Some("clip")
        );
        assert_eq!(detect_family(r#"{"model_type": "bert"}"#), None);
        assert_eq!(
            detect_family(r#"{"model_type": "imagebind", "out_embed_dim": 1024}"#),
            Some("imagebind")
        );
        assert_eq!(detect_family("not json"), None);
    }

    #[test]
    fn reads_card_license() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("README.md"),
            "---\ntags: [x]\nlicense: mit\n---\n# Card\n",
        )
        .unwrap();
        assert_eq!(card_license(tmp.path()).as_deref(), Some("mit"));
    }

    #[test]
    fn hashes_files_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::write(&a, b"abc").unwrap();
        assert_eq!(
            sha256_files(&[a]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
