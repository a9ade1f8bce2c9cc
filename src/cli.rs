//! Command-line commands. `main.rs` parses arguments with clap and calls into here.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::embed::hub::HubOptions;
use crate::embed::{load_encoder, DeviceSpec, Input, Modality, ModelSpec, Precision};

/// Arguments of `omnibind embed`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbedArgs {
    /// Model directory (Hugging Face layout) or Hugging Face model id.
    #[arg(long)]
    pub model: String,
    /// Image file to embed (repeatable with --batch).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Text to embed (repeatable with --batch).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Embed several inputs in one forward pass per modality; prints one JSON object per line.
    #[arg(long)]
    pub batch: bool,
    /// Compute device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision: auto (f32 on CPU, f16 on GPU), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// Download a hub model's missing files (off by default).
    #[arg(long)]
    pub allow_download: bool,
    /// Print load, preprocessing and forward-pass times to standard error.
    #[arg(long)]
    pub timings: bool,
}

#[derive(Serialize)]
struct EmbedOutput<'a> {
    model: &'a str,
    modality: Modality,
    dim: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    vector: &'a [f32],
}

/// `omnibind embed`: prints L2-normalised embeddings as JSON.
pub fn embed(args: EmbedArgs) -> Result<()> {
    let n = args.images.len() + args.texts.len();
    if n == 0 {
        bail!("nothing to embed: give --image FILE or --text TEXT");
    }
    if n > 1 && !args.batch {
        bail!("{n} inputs given: add --batch to embed several inputs in one forward pass");
    }
    let mut spec = ModelSpec::new(model_name(&args.model), args.model.clone());
    spec.device = args.device;
    spec.precision = args.precision;
    spec.max_batch = n.max(1);
    spec.hub = HubOptions {
        allow_download: args.allow_download,
        ..HubOptions::default()
    };
    let t0 = Instant::now();
    let encoder = load_encoder(&spec).with_context(|| format!("loading model `{}`", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();

    let mut inputs = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        inputs.push(Input::Bytes {
            modality: Modality::Image,
            bytes,
        });
        labels.push(path.display().to_string());
    }
    for t in &args.texts {
        inputs.push(Input::Text(t.clone()));
        labels.push(t.clone());
    }
    let t1 = Instant::now();
    let results = encoder.embed_batch(&inputs)?;
    let embed_s = t1.elapsed().as_secs_f64();
    if args.timings {
        eprintln!(
            "load {load_s:.3}s, embed {n} items {embed_s:.3}s ({:.1} items/s) on {} ({})",
            n as f64 / embed_s,
            encoder.info().device,
            encoder.info().precision
        );
    }
    let mut failed = 0;
    for ((input, label), result) in inputs.iter().zip(labels).zip(results) {
        match result {
            Ok(vector) => {
                let out = EmbedOutput {
                    model: encoder.name(),
                    modality: input.modality(),
                    dim: vector.len(),
                    input: args.batch.then_some(label),
                    vector: &vector,
                };
                println!("{}", serde_json::to_string(&out)?);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {label}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {n} inputs could not be embedded");
    }
    Ok(())
}

fn model_name(path: &str) -> String {
    std::path::Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}
