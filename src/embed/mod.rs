//! Neural encoders that map inputs of every modality into a shared embedding space.
//!
//! This layer owns:
//! - the [`Encoder`] trait that every model family implements (CLIP now, ImageBind next),
//! - the [`registry`] that loads models by name or path from configuration,
//! - [`device`]: the one place that chooses the compute device and precision,
//! - [`preprocess`]: decoding and preprocessing of raw inputs, one file per modality,
//! - the model code itself ([`clip`]), written in candle's style.
//!
//! It never imports the HTTP, store or index layers: callers hand it bytes or text and get
//! L2-normalised vectors back.

pub mod budget;
pub mod builtin;
pub mod clip;
pub mod device;
pub mod hub;
pub mod imagebind;
pub mod layers;
pub mod preprocess;
pub mod registry;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use budget::{DecodeBudget, DecodeLimits, Reservation, UploadBudget};
pub use device::{select_device, DeviceSpec, Precision};
pub use registry::{load_encoder, ModelSpec};

/// The kinds of input an encoder may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Image,
    Audio,
    Video,
    Depth,
    Thermal,
    Imu,
}

impl Modality {
    pub const ALL: [Modality; 7] = [
        Modality::Text,
        Modality::Image,
        Modality::Audio,
        Modality::Video,
        Modality::Depth,
        Modality::Thermal,
        Modality::Imu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Video => "video",
            Modality::Depth => "depth",
            Modality::Thermal => "thermal",
            Modality::Imu => "imu",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Modality {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Modality::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| EmbedError::UnknownModality(s.to_string()))
    }
}

/// The encoded bytes of a file input: in memory, or in a file on disk (an upload spooled while
/// it was received) that is read only when the input is decoded, so that a batch of large files
/// is never held in memory at once.
#[derive(Debug, Clone)]
pub enum Media {
    Memory(Vec<u8>),
    /// A file nothing else writes to; it is deleted when the last clone is dropped.
    File {
        path: Arc<tempfile::TempPath>,
        len: u64,
    },
}

impl Media {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Media::Memory(b) => b.len() as u64,
            Media::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole content (read from disk for a file).
    pub fn load(&self) -> Result<Cow<'_, [u8]>, EmbedError> {
        match self {
            Media::Memory(b) => Ok(Cow::Borrowed(b)),
            Media::File { path, .. } => {
                let p: &std::path::Path = path.as_ref();
                std::fs::read(p)
                    .map(Cow::Owned)
                    .map_err(|e| EmbedError::io(p, e))
            }
        }
    }

    /// The first `n` bytes at most.
    pub fn head(&self, n: usize) -> Result<Cow<'_, [u8]>, EmbedError> {
        match self {
            Media::Memory(b) => Ok(Cow::Borrowed(&b[..b.len().min(n)])),
            Media::File { path, .. } => {
                use std::io::Read;
                let p: &std::path::Path = path.as_ref();
                let mut buf = Vec::with_capacity(n);
                std::fs::File::open(p)
                    .and_then(|f| f.take(n as u64).read_to_end(&mut buf))
                    .map_err(|e| EmbedError::io(p, e))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// The content as an owned vector (no copy for bytes in memory).
    pub fn into_vec(self) -> Result<Vec<u8>, EmbedError> {
        match self {
            Media::Memory(b) => Ok(b),
            file => file.load().map(Cow::into_owned),
        }
    }
}

impl From<Vec<u8>> for Media {
    fn from(b: Vec<u8>) -> Self {
        Media::Memory(b)
    }
}

/// One raw input: a text, or the encoded bytes of a file of some modality.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Bytes { modality: Modality, bytes: Media },
}

impl Input {
    pub fn modality(&self) -> Modality {
        match self {
            Input::Text(_) => Modality::Text,
            Input::Bytes { modality, .. } => *modality,
        }
    }
}

/// What a loaded model tells about itself.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Name the model is known by (configuration key or directory name).
    pub name: String,
    /// Model family, e.g. `clip`.
    pub family: String,
    pub modalities: Vec<Modality>,
    pub dim: usize,
    /// Compute device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Precision the weights run in: `f32`, `f16` or `bf16`.
    pub precision: String,
    /// Licence of the weights, as far as the model directory states it.
    pub license: String,
    /// SHA-256 of the weight file(s), so stored vectors can name the exact weights.
    pub weights_sha256: String,
    /// Version of the preprocessing pipeline; bumped whenever preprocessing output changes.
    pub preprocess_version: u32,
}

impl ModelInfo {
    /// The error for an input of a modality this model does not embed.
    pub fn unsupported(&self, modality: Modality) -> EmbedError {
        EmbedError::UnsupportedModality {
            model: self.name.clone(),
            modality,
            accepted: self
                .modalities
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// A model that embeds inputs of one or more modalities into one vector space.
pub trait Encoder: Send + Sync {
    fn info(&self) -> &ModelInfo;

    fn name(&self) -> &str {
        &self.info().name
    }

    fn modalities(&self) -> &[Modality] {
        &self.info().modalities
    }

    fn dim(&self) -> usize {
        self.info().dim
    }

    /// Embeds a batch of inputs, one forward pass per modality present in the batch.
    ///
    /// The outer error is a failure of the model itself; the inner ones are per input
    /// (an undecodable file fails alone, the rest of the batch is still embedded).
    /// Returned vectors are L2-normalised and in input order. Decoding uses a decode-memory
    /// budget of its own with the default limits; a server shares one through
    /// [`Encoder::embed_batch_within`].
    fn embed_batch(
        &self,
        inputs: &[Input],
    ) -> Result<Vec<Result<Vec<f32>, EmbedError>>, EmbedError> {
        self.embed_batch_within(inputs, &DecodeBudget::default())
    }

    /// [`Encoder::embed_batch`], files decoded within `budget`: each file reserves the memory
    /// its header says it needs before it is decoded, and the batch's files decoded at once
    /// share one upload budget.
    fn embed_batch_within(
        &self,
        inputs: &[Input],
        budget: &DecodeBudget,
    ) -> Result<Vec<Result<Vec<f32>, EmbedError>>, EmbedError>;

    /// Embeds a single input.
    fn embed_one(&self, input: &Input) -> Result<Vec<f32>, EmbedError> {
        self.embed_batch(std::slice::from_ref(input))?
            .pop()
            .expect("one result per input")
    }
}

/// Errors of the embedding layer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "unknown modality `{0}` (expected one of text, image, audio, video, depth, thermal, imu)"
    )]
    UnknownModality(String),
    #[error("model `{model}` does not accept {modality} input (it accepts: {accepted})")]
    UnsupportedModality {
        model: String,
        modality: Modality,
        accepted: String,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported media format: {0}")]
    UnsupportedFormat(String),
    #[error("could not decode input: {0}")]
    Decode(String),
    /// The process's decode-memory budget is in use by other uploads ([`budget`]).
    #[error("{0}")]
    Busy(String),
    #[error("model files not found: {0}")]
    ModelNotFound(String),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("download failed: {0}")]
    Download(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl EmbedError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        EmbedError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// One answer per input of a batch, filled in as each modality is processed.
pub(crate) type BatchSlots = Vec<Option<Result<Vec<f32>, EmbedError>>>;

/// Preprocesses `items` (input position, raw bytes) in parallel, embeds the ones that succeeded
/// in one call, and writes each input's vector or error into `out` at its position. The items
/// share one upload budget of `budget`: `preprocess` reserves each file's decode memory in it
/// (so files wait for each other when they do not fit together).
pub(crate) fn embed_in_parallel<P, E>(
    items: &[(usize, &Media)],
    budget: &DecodeBudget,
    preprocess: P,
    embed: E,
    out: &mut BatchSlots,
) -> Result<(), EmbedError>
where
    P: Fn(&[u8], &UploadBudget) -> Result<Vec<f32>, EmbedError> + Sync,
    E: FnOnce(&[&[f32]]) -> Result<Vec<Vec<f32>>, EmbedError>,
{
    use rayon::prelude::*;
    let upload = budget.upload();
    // Decoding dominates small models: decode in parallel, then one forward pass.
    let pre: Vec<(usize, Result<Vec<f32>, EmbedError>)> = items
        .par_iter()
        .map(|(i, m)| (*i, m.load().and_then(|b| preprocess(&b, &upload))))
        .collect();
    let mut ok_idx = Vec::new();
    let mut ok = Vec::new();
    for (i, r) in pre {
        match r {
            Ok(x) => {
                ok_idx.push(i);
                ok.push(x);
            }
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    if !ok.is_empty() {
        let refs: Vec<&[f32]> = ok.iter().map(Vec::as_slice).collect();
        for (i, e) in ok_idx.into_iter().zip(embed(&refs)?) {
            out[i] = Some(Ok(e));
        }
    }
    Ok(())
}

/// Scales a vector to unit L2 norm in place (a zero or non-finite vector is left as it is).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
