//! `omnibind bench encode`: encoder throughput in items per second, per model, modality and
//! batch size, with decoding and preprocessing timed apart from the forward pass.
//!
//! Models:
//! - `default`: the bundled six-modality model (`--default-model`), every modality it has, on
//!   the sample files of `tests/fixtures` (images, speech, depth and thermal maps, IMU
//!   recordings, zipped video frames) and caption texts;
//! - `clip-b32`: the full-size CLIP ViT-B/32 architecture with seeded random weights, written
//!   once to `<out>/clip-b32/` as a Hugging Face checkpoint (`config.json`, `model.safetensors`,
//!   the CLIP tokenizer), loaded back through the server's own loading path.
//!
//! For `clip-b32` it also writes what `benches/peers/encode_peers.py` replays in PyTorch on the
//! same weights and threads: `inputs.json` (the token ids of each text) and `pixels.npy` (the
//! preprocessed images), with omnibind's embeddings of both to check the two agree.
//! Results: `<out>/results/encode-omnibind.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};

use crate::embed::clip::{ClipConfig, ClipEncoder, ClipModel};
use crate::embed::imagebind::ImageBindEncoder;
use crate::embed::preprocess::text::TextTokenizer;
use crate::embed::{select_device, DeviceSpec, EmbedError, Modality, ModelSpec};

/// Arguments of `omnibind bench encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeBenchArgs {
    /// Work directory: the ViT-B/32 checkpoint, replay inputs and results are written here.
    #[arg(long)]
    pub out: PathBuf,
    /// Models to measure: `default`, `clip-b32`.
    #[arg(long, value_delimiter = ',', default_value = "default,clip-b32")]
    pub models: Vec<String>,
    /// Batch sizes of the forward passes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,
    /// Least time spent on one measurement, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Directory of the bundled default model.
    #[arg(long, default_value = "models/default")]
    pub default_model: PathBuf,
    /// The repository's test fixtures (sample inputs and the CLIP tokenizer).
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
}

/// The two encoder families, with preprocessing and forward pass apart.
enum Loaded {
    Clip(ClipEncoder),
    ImageBind(ImageBindEncoder),
}

impl Loaded {
    fn load(dir: &Path) -> Result<Self> {
        let mut spec = ModelSpec::new("bench", dir.display().to_string());
        spec.device = DeviceSpec::Cpu;
        spec.max_batch = 1024;
        let device = select_device(spec.device)?;
        let dtype = spec.precision.dtype(&device);
        let config = std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}/config.json", dir.display()))?;
        Ok(match crate::embed::registry::detect_family(&config) {
            Some("clip") => Loaded::Clip(ClipEncoder::load(dir, &spec, &device, dtype)?),
            Some("imagebind") => {
                Loaded::ImageBind(ImageBindEncoder::load(dir, &spec, &device, dtype)?)
            }
            _ => bail!("{}: not a CLIP or ImageBind model", dir.display()),
        })
    }

    fn modalities(&self) -> Vec<Modality> {
        use crate::embed::Encoder;
        match self {
            Loaded::Clip(e) => e.info().modalities.clone(),
            Loaded::ImageBind(e) => e.info().modalities.clone(),
        }
    }

    fn preprocess(&self, m: Modality, bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
        match self {
            Loaded::Clip(e) => e.preprocess_image(bytes),
            Loaded::ImageBind(e) => e.preprocess(m, bytes),
        }
    }

    fn forward(&self, m: Modality, inputs: &[&[f32]]) -> Result<Tensor, EmbedError> {
        match self {
            Loaded::Clip(e) => e.embed_pixels(inputs),
            Loaded::ImageBind(e) => e.embed_preprocessed(m, inputs),
        }
    }

    fn tokenizer(&self) -> Result<&TextTokenizer, EmbedError> {
        match self {
            Loaded::Clip(e) => e.tokenizer(),
            Loaded::ImageBind(e) => e.tokenizer(),
        }
        .ok_or_else(|| EmbedError::Config("the model has no tokenizer".into()))
    }

    /// Token ids of one text, as the text tower gets them.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        self.tokenizer()?.encode(text)
    }

    fn forward_texts(&self, texts: &[&str]) -> Result<Tensor, EmbedError> {
        match self {
            Loaded::Clip(e) => e.embed_texts(texts),
            Loaded::ImageBind(e) => e.embed_texts(texts),
        }
    }
}

/// Sample files of a modality in the fixtures, with the modality they are decoded as.
fn sample_files(fixtures: &Path, m: Modality) -> Result<Vec<Vec<u8>>> {
    let (dir, ext): (&str, &[&str]) = match m {
        Modality::Image => ("clip/images", &["jpg", "png", "gif"]),
        Modality::Audio => ("imagebind/audio", &["wav"]),
        Modality::Depth => ("imagebind/depth", &["npy"]),
        Modality::Thermal => ("imagebind/thermal", &["png"]),
        Modality::Imu => ("imagebind/imu", &["npy"]),
        Modality::Video => ("imagebind/video", &["zip"]),
        Modality::Text => bail!("texts are not files here"),
    };
    let dir = fixtures.join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ext.contains(&e))
    });
    paths.sort();
    if paths.is_empty() {
        bail!("no {m} samples in {}", dir.display());
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn sample_texts(fixtures: &Path) -> Result<Vec<String>> {
    let path = fixtures.join("clip/texts.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `f` until at least `seconds` have passed (and at least three times) after one warm-up
/// call; the mean seconds per call.
fn time_per_call(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || t.elapsed().as_secs_f64() < seconds {
        f()?;
        calls += 1;
    }
    Ok(t.elapsed().as_secs_f64() / f64::from(calls))
}

/// `n` items taken from `pool` in turn.
fn cycled<T: Clone>(pool: &[T], n: usize) -> Vec<T> {
    pool.iter().cycle().take(n).cloned().collect()
}

/// One model's measurements: per modality, the preprocessing time per item (one thread) and
/// the forward pass's items per second at each batch size.
fn measure(model: &Loaded, args: &EncodeBenchArgs) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for m in model.modalities() {
        let mut row = json!({ "modality": m.as_str() });
        // Times `forward` over batches of each size cycled from `pool`.
        let mut time_batches = |pool_len: usize, forward: &dyn Fn(&[usize]) -> Result<()>| {
            for &b in &args.batches {
                let picks: Vec<usize> = (0..b).map(|i| i % pool_len).collect();
                let s = time_per_call(args.seconds, || forward(&picks))?;
                row["items_per_s"][b.to_string()] = json!(b as f64 / s);
                println!("  {m:>7} batch {b:>3}: {:>9.1} items/s", b as f64 / s);
            }
            Ok::<_, anyhow::Error>(())
        };
        let per_item = if m == Modality::Text {
            let texts = sample_texts(&args.fixtures)?;
            time_batches(texts.len(), &|picks| {
                let refs: Vec<&str> = picks.iter().map(|&i| texts[i].as_str()).collect();
                model.forward_texts(&refs)?;
                Ok(())
            })?;
            time_per_call(args.seconds / 3.0, || {
                for t in &texts {
                    model.tokenize(t)?;
                }
                Ok(())
            })? / texts.len() as f64
        } else {
            let files = sample_files(&args.fixtures, m)?;
            let pre: Vec<Vec<f32>> = files
                .iter()
                .map(|f| model.preprocess(m, f))
                .collect::<Result<_, _>>()?;
            time_batches(pre.len(), &|picks| {
                let refs: Vec<&[f32]> = picks.iter().map(|&i| pre[i].as_slice()).collect();
                model.forward(m, &refs)?;
                Ok(())
            })?;
            time_per_call(args.seconds / 3.0, || {
                for f in &files {
                    model.preprocess(m, f)?;
                }
                Ok(())
            })? / files.len() as f64
        };
        row["preprocess_ms_per_item"] = json!(per_item * 1e3);
        println!(
            "  {m:>7} preprocessing: {:.3} ms per item (one thread)",
            per_item * 1e3
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The Hugging Face `config.json` of CLIP ViT-B/32 (openai/clip-vit-base-patch32's shapes).
fn vit_b32_hf_config() -> Value {
    let c = ClipConfig::vit_base_patch32();
    let (t, v) = (&c.text_config, &c.vision_config);
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": c.projection_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": t.layer_norm_eps,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
            "projection_dim": c.projection_dim,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": v.layer_norm_eps,
            "projection_dim": c.projection_dim,
        },
    })
}

/// Writes `<dir>`: ViT-B/32 with seeded random weights (normal, std 0.02; norm scales around
/// one) in Hugging Face layout, unless it is already there.
fn write_vit_b32(dir: &Path, fixtures: &Path) -> Result<()> {
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ClipModel::new(vb, &ClipConfig::vit_base_patch32())?;
    let mut rng = crate::data::rng::Rng::new(32);
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let n = var.elem_count();
        let is_norm_scale =
            (name.contains("norm") || name.contains("layrnorm")) && name.ends_with(".weight");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let x = (rng.normal() * 0.02) as f32;
                if is_norm_scale {
                    1.0 + x
                } else {
                    x
                }
            })
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    drop(vars);
    varmap.save(dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&vit_b32_hf_config())?,
    )?;
    let clip = fixtures.join("clip/models/clip-tiny-quickgelu");
    std::fs::copy(
        clip.join("preprocessor_config.json"),
        dir.join("preprocessor_config.json"),
    )?;
    std::fs::copy(
        fixtures.join("clip/tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )?;
    Ok(())
}

/// Writes what the PyTorch peer replays (token ids, pixels) and omnibind's embeddings of them.
fn write_replay(dir: &Path, model: &Loaded, args: &EncodeBenchArgs) -> Result<()> {
    let n = args.batches.iter().copied().max().unwrap_or(1);
    let texts = cycled(&sample_texts(&args.fixtures)?, n);
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.tokenize(t))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let text_emb = model.forward_texts(&refs)?.to_vec2::<f32>()?;
    let files = cycled(&sample_files(&args.fixtures, Modality::Image)?, n);
    let pixels: Vec<Vec<f32>> = files
        .iter()
        .map(|f| model.preprocess(Modality::Image, f))
        .collect::<Result<_, _>>()?;
    let prefs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let image_emb = model.forward(Modality::Image, &prefs)?.to_vec2::<f32>()?;
    super::index::write_npy(&dir.join("pixels.npy"), &pixels)?;
    std::fs::write(
        dir.join("inputs.json"),
        serde_json::to_string(&json!({
            "text_ids": ids,
            "pad_id": model.tokenizer()?.pad_id(),
            "text_embeddings": text_emb,
            "image_embeddings": image_emb,
            "image_shape": [3, 224, 224],
        }))?,
    )?;
    Ok(())
}

/// `omnibind bench encode`.
pub fn encode(args: EncodeBenchArgs) -> Result<()> {
    std::fs::create_dir_all(args.out.join("results"))?;
    let threads = rayon::current_num_threads();
    let mut results = json!({
        "threads": threads,
        "batches": args.batches,
        "seconds": args.seconds,
        "models": {},
    });
    for name in &args.models {
        let (dir, arch) = match name.as_str() {
            "default" => (args.default_model.clone(), "bundled default model"),
            "clip-b32" => {
                let dir = args.out.join("clip-b32");
                write_vit_b32(&dir, &args.fixtures)?;
                (dir, "CLIP ViT-B/32, random weights")
            }
            other => bail!("unknown model `{other}` (expected default or clip-b32)"),
        };
        println!("{name} ({arch}), {threads} threads:");
        let model = Loaded::load(&dir)?;
        if name == "clip-b32" {
            write_replay(&dir, &model, &args)?;
        }
        let rows = measure(&model, &args)?;
        results["models"][name] = json!({ "architecture": arch, "modalities": rows });
    }
    let path = args.out.join("results/encode-omnibind.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_reads_back_as_vit_b32() {
        let text = serde_json::to_string(&vit_b32_hf_config()).unwrap();
        assert_eq!(
            crate::embed::registry::detect_family(&text),
            Some("clip"),
            "{text}"
        );
        let read = ClipConfig::from_hf_json(&text).unwrap();
        let want = ClipConfig::vit_base_patch32();
        assert_eq!(format!("{read:?}"), format!("{want:?}"));
    }

    #[test]
    fn every_sample_modality_has_files_and_batches_cycle_through_them() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for m in Modality::ALL.into_iter().filter(|m| *m != Modality::Text) {
            assert!(!sample_files(&fixtures, m).unwrap().is_empty(), "{m}");
        }
        assert!(sample_texts(&fixtures).unwrap().len() >= 8);
        assert_eq!(cycled(&[1, 2, 3], 7), [1, 2, 3, 1, 2, 3, 1]);
    }
}
