//! Command-line commands. `main.rs` parses arguments with clap and calls into here.
//!
//! `embed` runs a model locally; `train` carries out a training recipe; `eval` measures a model
//! on an OpenMoji dataset; `serve` runs the HTTP
//! server; `search` and `ingest` are clients of a running server's HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::app::{self, AppState};
use crate::config::{Overrides, Settings};
use crate::embed::registry::Registry;
use crate::engine::Engine;

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
    /// Audio file (WAV, FLAC, MP3, OGG) to embed, for models with an audio tower.
    #[arg(long = "audio", value_name = "FILE")]
    pub audio: Vec<PathBuf>,
    /// Video (zip of frames) to embed, for models with a video input.
    #[arg(long = "video", value_name = "FILE")]
    pub video: Vec<PathBuf>,
    /// Depth map (16-bit PNG in mm, or .npy in metres) to embed.
    #[arg(long = "depth", value_name = "FILE")]
    pub depth: Vec<PathBuf>,
    /// Thermal image (8/16-bit greyscale PNG or TIFF) to embed.
    #[arg(long = "thermal", value_name = "FILE")]
    pub thermal: Vec<PathBuf>,
    /// IMU recording (CSV or .npy) to embed.
    #[arg(long = "imu", value_name = "FILE")]
    pub imu: Vec<PathBuf>,
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
    /// Load only these modalities' towers (comma-separated; all by default).
    #[arg(long, value_delimiter = ',')]
    pub modalities: Vec<Modality>,
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
    let files: [(Modality, &Vec<PathBuf>); 6] = [
        (Modality::Image, &args.images),
        (Modality::Audio, &args.audio),
        (Modality::Video, &args.video),
        (Modality::Depth, &args.depth),
        (Modality::Thermal, &args.thermal),
        (Modality::Imu, &args.imu),
    ];
    let n = args.texts.len() + files.iter().map(|(_, f)| f.len()).sum::<usize>();
    if n == 0 {
        bail!("nothing to embed: give --image FILE, --text TEXT or another modality's file");
    }
    if n > 1 && !args.batch {
        bail!("{n} inputs given: add --batch to embed several inputs in one forward pass");
    }
    let mut spec = ModelSpec::new(model_name(&args.model), args.model.clone());
    spec.device = args.device;
    spec.precision = args.precision;
    spec.max_batch = n.max(1);
    if !args.modalities.is_empty() {
        spec.modalities = Some(args.modalities.clone());
    }
    spec.hub = HubOptions {
        allow_download: args.allow_download,
        ..HubOptions::default()
    };
    let t0 = Instant::now();
    let encoder = load_encoder(&spec).with_context(|| format!("loading model `{}`", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();

    let mut inputs = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for (modality, paths) in files {
        for path in paths {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            inputs.push(Input::Bytes {
                modality,
                bytes: bytes.into(),
            });
            labels.push(path.display().to_string());
        }
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

/// Arguments of `omnibind convert-imagebind`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertImageBindArgs {
    /// The official checkpoint (`imagebind_huge.pth`, a PyTorch state dict).
    pub input: PathBuf,
    /// Output model directory (created; existing weights are not overwritten).
    pub output: PathBuf,
    /// Towers to keep, comma-separated (image, text, audio, depth, thermal, imu; image keeps
    /// video too). All by default.
    #[arg(long, value_delimiter = ',')]
    pub modalities: Vec<Modality>,
    /// Stored precision of the output: f32, f16 or bf16 (default, or auto: as in the
    /// checkpoint).
    #[arg(long)]
    pub dtype: Option<Precision>,
    /// omnibind ImageBind `config.json` with the sizes, for checkpoints other than
    /// imagebind_huge (attention head counts cannot be read from the weights).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CLIP `tokenizer.json` to copy into the output (needed for text).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// Arguments of `omnibind data openmoji`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataOpenMojiArgs {
    /// The OpenMoji npm package, as `npm pack openmoji@17.0.0` writes it.
    #[arg(long, value_name = "TGZ")]
    pub package: PathBuf,
    /// Output dataset directory (created; must not hold a dataset already).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Only the first N emoji of the package's CSV.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Side of the square image, depth and thermal renderings, in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: u32,
    /// Seed of the synthetic depth, thermal and IMU data and of the voice choice.
    #[arg(long, default_value_t = crate::data::DEFAULT_SEED)]
    pub seed: u64,
    /// Skip the spoken annotations (espeak-ng not needed).
    #[arg(long)]
    pub no_audio: bool,
    /// Held-out list (default: models/default/heldout.txt when it exists, else computed).
    #[arg(long, value_name = "FILE")]
    pub heldout: Option<PathBuf>,
}

/// The committed held-out list of the default model.
pub const DEFAULT_HELDOUT: &str = "models/default/heldout.txt";

/// `omnibind data openmoji`: writes the dataset and prints its summary as JSON.
pub fn data_openmoji(args: DataOpenMojiArgs) -> Result<()> {
    use crate::data::{openmoji, OpenMojiOptions};
    let heldout = args.heldout.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_HELDOUT);
        if p.exists() {
            Some(p)
        } else {
            tracing::warn!("{DEFAULT_HELDOUT} not found: computing the held-out split");
            None
        }
    });
    let mut opts = OpenMojiOptions::new(&args.package, &args.out);
    opts.limit = args.limit;
    opts.image_size = args.image_size;
    opts.seed = args.seed;
    opts.audio = !args.no_audio;
    opts.heldout = heldout;
    let t0 = Instant::now();
    let summary = openmoji(&opts)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!(
        "{} items ({} skipped) written to {} in {:.1}s",
        summary.items,
        summary.skipped.len(),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Arguments of `omnibind eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Model directory (Hugging Face layout) or Hugging Face model id.
    #[arg(long)]
    pub model: String,
    /// Dataset directory written by `omnibind data openmoji`.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Items to evaluate.
    #[arg(long, value_enum, default_value = "heldout")]
    pub split: crate::eval::SplitChoice,
    /// Only the first N items of the split (manifest order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Compute device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision: auto (f32 on CPU, f16 on GPU), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
}

/// `omnibind eval`: prints the retrieval and classification tables as Markdown.
pub fn eval(args: EvalArgs) -> Result<()> {
    use crate::eval::{evaluate, table, write_json, EvalOptions};
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut spec = ModelSpec::new(model_name(&args.model), args.model.clone());
    spec.device = args.device;
    spec.precision = args.precision;
    spec.max_batch = args.batch_size;
    let t0 = Instant::now();
    let encoder = load_encoder(&spec).with_context(|| format!("loading model `{}`", args.model))?;
    let mut opts = EvalOptions::new(&args.data);
    opts.split = args.split;
    opts.limit = args.limit;
    opts.batch_size = args.batch_size;
    opts.progress = true;
    let report = evaluate(encoder.as_ref(), &opts)?;
    print!("{}", table::markdown(&report));
    if let Some(path) = &args.json {
        write_json(&report, path)?;
    }
    eprintln!("evaluated in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `omnibind convert-imagebind`: official checkpoint to safetensors plus config.
pub fn convert_imagebind(args: ConvertImageBindArgs) -> Result<()> {
    use crate::embed::imagebind::convert::{convert, ConvertOptions};
    use crate::embed::imagebind::{ImageBindConfig, Tower};
    // The CPU's reading of a precision is the stored one; `auto` keeps the checkpoint's.
    let dtype = args
        .dtype
        .filter(|p| *p != Precision::Auto)
        .map(|p| p.dtype(&candle_core::Device::Cpu));
    let config = match &args.config {
        None => None,
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(ImageBindConfig::from_json(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?)
        }
    };
    let towers = (!args.modalities.is_empty()).then(|| {
        let mut t: Vec<Tower> = args.modalities.iter().map(|&m| Tower::of(m)).collect();
        t.dedup();
        t
    });
    let t0 = Instant::now();
    let report = convert(
        &args.input,
        &args.output,
        &ConvertOptions {
            towers,
            config,
            dtype,
            tokenizer: args.tokenizer.clone(),
        },
    )
    .with_context(|| format!("converting {}", args.input.display()))?;
    let names: Vec<&str> = report.towers.iter().map(|t| t.keys().name).collect();
    println!(
        "wrote {} ({} tensors, {} parameters, {:.1} MiB; towers: {}) in {:.1}s",
        args.output.display(),
        report.tensors,
        report.parameters,
        report.bytes as f64 / (1 << 20) as f64,
        names.join(", "),
        t0.elapsed().as_secs_f64()
    );
    if args.tokenizer.is_none() && report.towers.contains(&Tower::Text) {
        eprintln!(
            "note: text needs a CLIP tokenizer.json in {} (any OpenAI CLIP checkpoint's; pass              --tokenizer to copy one)",
            args.output.display()
        );
    }
    Ok(())
}

fn model_name(path: &str) -> String {
    std::path::Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// Arguments of `omnibind serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); its keys override the built-in defaults (see config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:6600 (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen on a non-loopback address although no API key is configured: anyone who can
    /// reach the port may read and change everything (sets auth.allow_unauthenticated_remote).
    #[arg(long)]
    pub allow_unauthenticated_remote: bool,
    /// Serve this one model instead of the configured ones: `builtin:default`, a model
    /// directory (`./dir`, `/abs/dir`), or a Hugging Face id (`openai/clip-vit-base-patch32`).
    #[arg(long, value_name = "DIR_OR_ID")]
    pub model: Option<String>,
    /// The name `--model` is served under (default: the id's or directory's last part).
    #[arg(long, value_name = "NAME", requires = "model")]
    pub model_name: Option<String>,
    /// Download missing files of Hugging Face models (sets hub.allow_download on every model).
    #[arg(long)]
    pub allow_download: bool,
}

/// `omnibind serve`: loads the configuration and models, opens the data directory and serves
/// the HTTP API until Ctrl-C or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        allow_unauthenticated_remote: args.allow_unauthenticated_remote,
        model: args.model,
        model_name: args.model_name,
        allow_download: args.allow_download,
    };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    let t = Instant::now();
    let registry = Registry::load(&settings.models).context("loading the models")?;
    let engine = Engine::open(&settings, registry).with_context(|| {
        format!(
            "opening the data directory {}",
            settings.server.data_dir.display()
        )
    })?;
    tracing::info!(
        data_dir = %settings.server.data_dir.display(),
        seconds = t.elapsed().as_secs_f64(),
        "engine open"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        let auth = &settings.auth;
        if auth.enabled() {
            tracing::info!(
                read_key = auth.read_key.is_some(),
                "API keys required on /v1 and /metrics"
            );
        } else if addr.ip().is_loopback() {
            tracing::warn!(
                "no API key configured: the API is open to anyone on this machine, so the \
                 server listens on the loopback address only (set auth.admin_key to serve others)"
            );
        } else {
            tracing::warn!(
                "no API key configured and listening on {addr}: anyone who can reach it may \
                 read and change everything (--allow-unauthenticated-remote)"
            );
        }
        let state = AppState::new(std::sync::Arc::new(engine), settings);
        app::run(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Default address of the server for the client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:6600";

/// Arguments of `omnibind search`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["text", "file"])))]
pub struct SearchArgs {
    /// Collection to search.
    #[arg(long)]
    pub collection: String,
    /// Search by this text.
    #[arg(long)]
    pub text: Option<String>,
    /// Search by this file (image, text file).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Number of results.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Filter as JSON, e.g. '{"modality":["image"]}'.
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// Base URL of the server.
    #[arg(long, env = "OMNIBIND_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API key sent as `Authorization: Bearer <key>` (prefer the environment variable).
    #[arg(long, env = "OMNIBIND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The `Authorization` header value for an API key (none for no key or an empty one).
pub(crate) fn authorization(api_key: Option<&str>) -> Option<String> {
    api_key
        .filter(|k| !k.is_empty())
        .map(|k| format!("Bearer {k}"))
}

/// A request to `url` carrying `authorization` (from [`authorization`]) when there is one.
pub(crate) fn keyed_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    authorization: Option<&str>,
) -> ureq::Request {
    let r = agent.request(method, url);
    match authorization {
        Some(a) => r.set("Authorization", a),
        None => r,
    }
}

/// A blocking client of the HTTP API.
struct Client {
    agent: ureq::Agent,
    base: String,
    /// `Authorization` header value, if a key was given.
    auth: Option<String>,
}

/// An error answer of the server, or a transport failure.
#[derive(Debug)]
enum CallError {
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status {
                status,
                code,
                message,
                ..
            } => write!(f, "{status} {code}: {message}"),
            CallError::Transport(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CallError {}

impl Client {
    fn new(base: &str, api_key: Option<&str>) -> Self {
        Client {
            auth: authorization(api_key),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(600))
                .build(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(&self, r: Result<ureq::Response, ureq::Error>) -> Result<Value, CallError> {
        match r {
            Ok(resp) => {
                if resp.status() == 204 {
                    return Ok(Value::Null);
                }
                resp.into_json()
                    .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let retry_after = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse().ok());
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                Err(CallError::Status {
                    status,
                    code: body["error"]["code"].as_str().unwrap_or("").to_string(),
                    message: body["error"]["message"].as_str().unwrap_or("").to_string(),
                    retry_after,
                })
            }
            Err(ureq::Error::Transport(t)) => Err(CallError::Transport(format!(
                "cannot reach the server at {}: {t}",
                self.base
            ))),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        keyed_request(&self.agent, method, &self.url(path), self.auth.as_deref())
    }

    fn get(&self, path: &str) -> Result<Value, CallError> {
        self.answer(self.request("GET", path).call())
    }

    fn post_json(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.answer(self.request("POST", path).send_json(body))
    }

    fn post_form(&self, path: &str, form: &Form) -> Result<Value, CallError> {
        self.answer(
            self.request("POST", path)
                .set("Content-Type", &form.content_type())
                .send_bytes(&form.body()),
        )
    }
}

/// A `multipart/form-data` body.
struct Form {
    boundary: String,
    parts: Vec<u8>,
}

impl Form {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Form {
            boundary: format!("omnibind-{nanos:x}-{:x}", std::process::id()),
            parts: Vec::new(),
        }
    }

    fn field(&mut self, name: &str, value: &str) {
        self.parts.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.parts.extend_from_slice(value.as_bytes());
        self.parts.extend_from_slice(b"\r\n");
    }

    fn file(&mut self, name: &str, filename: &str, bytes: &[u8]) {
        let filename: String = filename
            .chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect();
        self.parts.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.parts.extend_from_slice(bytes);
        self.parts.extend_from_slice(b"\r\n");
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn body(&self) -> Vec<u8> {
        let mut b = self.parts.clone();
        b.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        b
    }
}

fn collection_path(name: &str) -> String {
    format!("/v1/collections/{}", crate::api::encode_segment(name))
}

/// `omnibind search`: asks a running server and prints the hits as a table.
pub fn search(args: SearchArgs) -> Result<()> {
    let client = Client::new(&args.server, args.api_key.as_deref());
    let path = format!("{}/search", collection_path(&args.collection));
    let filter: Option<Value> = args
        .filter
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--filter is not valid JSON")?;
    let answer = match (&args.text, &args.file) {
        (Some(text), _) => {
            let mut body = json!({"query": text, "k": args.k});
            if let Some(f) = filter {
                body["filter"] = f;
            }
            client.post_json(&path, &body)
        }
        (None, Some(file)) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let mut form = Form::new();
            form.file("file", &file_name(file), &bytes);
            form.field("k", &args.k.to_string());
            if let Some(f) = filter {
                form.field("filter", &f.to_string());
            }
            client.post_form(&path, &form)
        }
        (None, None) => bail!("give --text or --file"),
    }?;
    let hits = answer["hits"].as_array().cloned().unwrap_or_default();
    print!("{}", hits_table(&hits));
    Ok(())
}

/// The hits of a search as an aligned text table.
fn hits_table(hits: &[Value]) -> String {
    let rows: Vec<[String; 5]> = hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            [
                (i + 1).to_string(),
                format!("{:.4}", h["score"].as_f64().unwrap_or(f64::NAN)),
                h["modality"].as_str().unwrap_or("").to_string(),
                h["id"].as_str().unwrap_or("").to_string(),
                h["metadata"].to_string(),
            ]
        })
        .collect();
    let head = ["rank", "score", "modality", "id", "metadata"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 4 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    if rows.is_empty() {
        out.push_str("(no results)\n");
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// Arguments of `omnibind ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Collection to add to; created when missing.
    #[arg(long)]
    pub collection: String,
    /// Model of the collection when it has to be created (default: the server's first model).
    #[arg(long)]
    pub model: Option<String>,
    /// Files per upload request.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub batch: u64,
    /// Base URL of the server.
    #[arg(long, env = "OMNIBIND_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API key sent as `Authorization: Bearer <key>` (prefer the environment variable).
    #[arg(long, env = "OMNIBIND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Files and folders (walked recursively; hidden files and folders are skipped).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Most bytes of files in one upload request (below the default upload limit).
const INGEST_MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Retries of a request the server refused as overloaded.
const INGEST_OVERLOAD_RETRIES: u32 = 60;

/// Counts of an ingest run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    pub created: usize,
    pub replaced: usize,
    pub duplicate: usize,
    pub failed: usize,
}

fn is_hidden(e: &walkdir::DirEntry) -> bool {
    e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.')
}

/// The files under `paths`, in a stable order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for root in paths {
        if !root.exists() {
            bail!("{} does not exist", root.display());
        }
        let walk = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !is_hidden(e));
        for entry in walk {
            let entry = entry?;
            if entry.file_type().is_file() {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((entry.into_path(), len));
            }
        }
    }
    Ok(files)
}

/// Uploads one batch; on an overloaded server waits and retries.
fn upload(client: &Client, path: &str, batch: &[(PathBuf, u64)]) -> Result<Vec<Value>, CallError> {
    let mut form = Form::new();
    for (p, _) in batch {
        let bytes = std::fs::read(p)
            .map_err(|e| CallError::Transport(format!("reading {}: {e}", p.display())))?;
        form.file("file", &file_name(p), &bytes);
        form.field(
            "metadata",
            &json!({"path": p.display().to_string()}).to_string(),
        );
    }
    let mut tries = 0;
    loop {
        match client.post_form(path, &form) {
            Err(CallError::Status {
                status: 503,
                retry_after,
                ..
            }) if tries < INGEST_OVERLOAD_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30)));
            }
            Err(e) => return Err(e),
            Ok(v) => return Ok(v["items"].as_array().cloned().unwrap_or_default()),
        }
    }
}

/// `omnibind ingest`: uploads files to a running server in batches. Content the collection
/// already holds is reported as a duplicate and not stored again, so rerunning after an
/// interruption resumes where it stopped.
pub fn ingest(args: IngestArgs) -> Result<IngestSummary> {
    let client = Client::new(&args.server, args.api_key.as_deref());
    let cpath = collection_path(&args.collection);
    match client.get(&cpath) {
        Ok(_) => {}
        Err(CallError::Status { status: 404, .. }) => {
            let model = match &args.model {
                Some(m) => m.clone(),
                None => client.get("/v1/models")?["models"][0]["name"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the server has no model loaded"))?
                    .to_string(),
            };
            client.post_json(
                "/v1/collections",
                &json!({"name": args.collection, "model": model}),
            )?;
            eprintln!(
                "created collection `{}` with model `{model}`",
                args.collection
            );
        }
        Err(e) => return Err(e.into()),
    }
    let files = collect_files(&args.paths)?;
    let items_path = format!("{cpath}/items");
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let t = Instant::now();
    let mut sum = IngestSummary::default();
    let mut failures: Vec<String> = Vec::new();
    let count = |sum: &mut IngestSummary, items: &[Value]| {
        for it in items {
            match it["status"].as_str() {
                Some("created") => sum.created += 1,
                Some("replaced") => sum.replaced += 1,
                Some("duplicate") => sum.duplicate += 1,
                _ => sum.failed += 1,
            }
        }
    };
    let mut start = 0;
    while start < files.len() {
        // Fill a batch up to `--batch` files and the byte cap (at least one file).
        let mut end = start;
        let mut bytes = 0;
        while end < files.len()
            && end - start < args.batch as usize
            && (end == start || bytes + files[end].1 <= INGEST_MAX_REQUEST_BYTES)
        {
            bytes += files[end].1;
            end += 1;
        }
        let batch = &files[start..end];
        match upload(&client, &items_path, batch) {
            Ok(items) => count(&mut sum, &items),
            Err(CallError::Transport(m)) => {
                bar.abandon();
                bail!("{m}");
            }
            // No collection, or a key that may not upload: no file would fare better.
            Err(
                e @ CallError::Status {
                    status: 401 | 403 | 404,
                    ..
                },
            ) => {
                bar.abandon();
                bail!("{e}");
            }
            // Uploads are all or nothing: find the bad files by sending them one at a time.
            Err(_) if batch.len() > 1 => {
                for one in batch.chunks(1) {
                    match upload(&client, &items_path, one) {
                        Ok(items) => count(&mut sum, &items),
                        Err(e @ CallError::Transport(_)) => {
                            bar.abandon();
                            bail!("{e}");
                        }
                        Err(e) => {
                            sum.failed += 1;
                            failures.push(format!("{}: {e}", one[0].0.display()));
                        }
                    }
                }
            }
            Err(e) => {
                sum.failed += 1;
                failures.push(format!("{}: {e}", batch[0].0.display()));
            }
        }
        bar.inc(batch.len() as u64);
        bar.set_message(format!(
            "created {}, duplicate {}, failed {}",
            sum.created, sum.duplicate, sum.failed
        ));
        start = end;
    }
    bar.finish_and_clear();
    for f in &failures {
        eprintln!("failed: {f}");
    }
    println!(
        "{} files in {:.1} s: created {}, replaced {}, duplicate {}, failed {}",
        files.len(),
        t.elapsed().as_secs_f64(),
        sum.created,
        sum.replaced,
        sum.duplicate,
        sum.failed
    );
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_table_aligns_columns() {
        let hits = vec![
            json!({"id": "a", "score": 0.5, "modality": "image", "metadata": {"k": 1}}),
            json!({"id": "longer-id", "score": -0.25, "modality": "text", "metadata": {}}),
        ];
        let t = hits_table(&hits);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "rank  score    modality  id         metadata");
        assert_eq!(lines[1], "1     0.5000   image     a          {\"k\":1}");
        assert_eq!(lines[2], "2     -0.2500  text      longer-id  {}");
        assert_eq!(hits_table(&[]).lines().nth(1), Some("(no results)"));
    }

    #[test]
    fn form_bodies_are_well_formed() {
        let mut f = Form::new();
        f.file("file", "a\"b.jpg", b"xyz");
        f.field("k", "3");
        let body = String::from_utf8(f.body()).unwrap();
        let b = &f.boundary;
        assert!(body.starts_with(&format!("--{b}\r\n")));
        assert!(body.contains("filename=\"a_b.jpg\""));
        assert!(body.ends_with(&format!("--{b}--\r\n")));
    }

    #[test]
    fn data_openmoji_arguments_and_run() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: DataOpenMojiArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let pkg = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openmoji-mini/openmoji-mini-1.0.0.tgz");
        let list = dir.path().join("heldout.txt");
        std::fs::write(&list, "2B50\n").unwrap();
        let out = dir.path().join("ds");
        let a = |p: &Path| p.display().to_string();
        let cmd = Cmd::try_parse_from([
            "data".to_owned(),
            "--package".into(),
            a(&pkg),
            "--out".into(),
            a(&out),
            "--limit".into(),
            "6".into(),
            "--image-size".into(),
            "32".into(),
            "--no-audio".into(),
            "--heldout".into(),
            a(&list),
        ])
        .unwrap();
        assert_eq!(cmd.args.image_size, 32);
        assert_eq!(cmd.args.seed, crate::data::DEFAULT_SEED);
        data_openmoji(cmd.args).unwrap();
        let items = crate::data::read_manifest(&out.join("manifest.jsonl")).unwrap();
        assert_eq!(items.len(), 6);
        let held: Vec<_> = items
            .iter()
            .filter(|i| i.split == crate::data::Split::Heldout)
            .map(|i| i.hexcode.as_str())
            .collect();
        assert_eq!(held, ["2B50"]);
        let defaults = Cmd::try_parse_from(["data", "--package", "p.tgz", "--out", "o"]).unwrap();
        assert_eq!(defaults.args.image_size, 224);
        assert!(!defaults.args.no_audio && defaults.args.limit.is_none());
        assert!(Cmd::try_parse_from(["data", "--out", "o"]).is_err());
    }

    #[test]
    fn eval_arguments() {
        use crate::eval::SplitChoice;
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: EvalArgs,
        }
        let d = Cmd::try_parse_from(["eval", "--model", "m", "--data", "d"]).unwrap();
        assert_eq!(d.args.split, SplitChoice::Heldout);
        assert_eq!((d.args.limit, d.args.batch_size), (None, 32));
        assert!(d.args.json.is_none());
        let c = Cmd::try_parse_from([
            "eval", "--model", "m", "--data", "d", "--split", "all", "--limit", "5", "--json",
            "o.json",
        ])
        .unwrap();
        assert_eq!((c.args.split, c.args.limit), (SplitChoice::All, Some(5)));
        assert_eq!(c.args.json, Some(PathBuf::from("o.json")));
        assert!(
            Cmd::try_parse_from(["eval", "--model", "m", "--data", "d", "--split", "x"]).is_err()
        );
        assert!(Cmd::try_parse_from(["eval", "--model", "m"]).is_err());
    }
}

/// Arguments of `omnibind train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Training recipe (TOML; see the `train::recipe` module documentation).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Dataset directory (`omnibind data openmoji --out`) in place of the recipe's `data.path`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Stop every stage after this many steps (to time a recipe).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Also log the mean loss of every N steps.
    #[arg(long, default_value_t = 0)]
    pub log_every: usize,
}

/// Carries out a training recipe (resuming from its checkpoints) and prints one JSON line per
/// stage; progress goes to standard error.
pub fn train(args: TrainArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.recipe)
        .with_context(|| format!("reading {}", args.recipe.display()))?;
    let recipe = crate::train::Recipe::from_toml(&text)?;
    let base = args
        .recipe
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // One bar per stage on a terminal: steps, loss and learning rate of the last step, ETA.
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps, {msg}, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let shown = bar.clone();
    let progress: crate::train::ProgressFn =
        std::sync::Arc::new(move |p: crate::train::Progress<'_>| match p {
            crate::train::Progress::Stage { name, steps, done } => {
                shown.reset();
                shown.set_prefix(name.to_string());
                shown.set_length(steps as u64);
                shown.set_position(done as u64);
            }
            crate::train::Progress::Step { loss, lr } => {
                shown.set_message(format!("loss {loss:.4}, lr {lr:.2e}"));
                shown.inc(1);
            }
        });
    let options = crate::train::RunOptions {
        data: args.data.clone(),
        max_steps: args.max_steps,
        log_every: args.log_every,
        progress: Some(progress),
    };
    let reports = crate::train::recipe::run_with(&recipe, &text, base, &options, |line| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    });
    bar.finish_and_clear();
    let reports = reports?;
    for r in reports {
        println!(
            "{}",
            json!({
                "stage": r.name,
                "checkpoint": base.join(&recipe.output).join(&r.name),
                "epochs_run": r.epochs_run,
                "steps_run": r.steps_run,
                "first_epoch_loss": r.first_loss,
                "last_epoch_loss": r.last_loss,
                "steps_per_sec": r.steps_per_sec,
            })
        );
    }
    Ok(())
}
