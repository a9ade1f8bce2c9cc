//! `omnibind bench index`: the vector indexes measured in-process, on data the peer libraries
//! can be run on too (`benches/peers/`, driven by `benches/index.sh`).
//!
//! For each dataset the command writes, under `--out`:
//! - `<dataset>/base.npy`, `queries.npy` (`f32`, L2-normalised), `gt.npy` (`i64`, exact top-k
//!   row numbers by cosine, from the flat index) and `params.json` (`m`, `ef_construction`,
//!   `k`, the `ef_search` sweep);
//! - `results/omnibind-<kind>-<dataset>.json`: build rate, peak and resident memory per
//!   vector, dump size, reload time, and per `ef_search` the recall@k and the queries per
//!   second on one thread and on all threads.
//!
//! Each kind is measured in a child process of its own, so its peak memory (`VmHWM`, reset
//! before the build) is its own. Build input is given in batches of [`INSERT_BATCH`] vectors,
//! as the engine does, so a copy of the whole dataset never counts against an index.
//!
//! Datasets: `synthetic` (seeded unit vectors around 256 cluster centres) and, with `--real`,
//! `real`: embeddings of generated captions by the bundled default model (`--model`).

use std::collections::HashSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::index::{self, IndexConfig, IndexKind, SearchParams};

/// Vectors per `insert_batch` call while building.
const INSERT_BATCH: usize = 4096;
/// A timed pass shorter than this is repeated (best of three).
const MIN_TIMED_SECONDS: f64 = 2.0;

/// Arguments of `omnibind bench index`.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexBenchArgs {
    /// Work directory: datasets and results are written here.
    #[arg(long)]
    pub out: PathBuf,
    /// Vectors in the synthetic dataset.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Dimension of the synthetic dataset.
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Queries per dataset (held out from the base vectors).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Also measure this many real embeddings (captions embedded by `--model`; 0: skip).
    #[arg(long, default_value_t = 0)]
    pub real: usize,
    /// Model directory that embeds the real dataset.
    #[arg(long, default_value = "models/default")]
    pub model: String,
    /// Index kinds to measure.
    #[arg(long, value_delimiter = ',', default_value = "hnsw,hnsw_rs")]
    pub kinds: Vec<String>,
    /// The ef_search values swept.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,16,24,32,48,64,96,128,192,256,384,512"
    )]
    pub ef: Vec<usize>,
    /// HNSW links per point and layer.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW candidate-list width while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Measures one kind on one prepared dataset (`DATASET KIND`); used by the command itself
    /// to run each kind in a process of its own.
    #[arg(long, num_args = 2, hide = true)]
    pub one: Option<Vec<String>>,
}

/// Parameters shared with the peer libraries, stored as `params.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Params {
    m: usize,
    ef_construction: usize,
    k: usize,
    ef_search: Vec<usize>,
}

/// `omnibind bench index`.
pub fn index(args: IndexBenchArgs) -> Result<()> {
    if let Some(one) = &args.one {
        let kind = parse_kind(&one[1])?;
        return measure(&args.out, &one[0], kind);
    }
    let kinds: Vec<IndexKind> = args
        .kinds
        .iter()
        .map(|k| parse_kind(k))
        .collect::<Result<_>>()?;
    let params = Params {
        m: args.m,
        ef_construction: args.ef_construction,
        k: args.k,
        ef_search: args.ef.clone(),
    };
    let mut datasets = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let synthetic = super::clustered_vectors(args.n + args.queries, args.dim, &mut rng);
    prepare(&args.out, "synthetic", synthetic, args.queries, &params)?;
    datasets.push("synthetic");
    if args.real > 0 {
        let real = real_embeddings(&args.model, args.real + args.queries, args.seed)?;
        prepare(&args.out, "real", real, args.queries, &params)?;
        datasets.push("real");
    }
    let exe = std::env::current_exe().context("locating the omnibind binary")?;
    for dataset in &datasets {
        for kind in &kinds {
            eprintln!("measuring {kind} on {dataset}");
            let status = std::process::Command::new(&exe)
                .args(["bench", "index", "--out"])
                .arg(&args.out)
                .args(["--one", dataset, &kind.to_string()])
                .status()
                .context("running the measuring process")?;
            if !status.success() {
                bail!("measuring {kind} on {dataset} failed ({status})");
            }
        }
    }
    Ok(())
}

fn parse_kind(name: &str) -> Result<IndexKind> {
    serde_json::from_value(Value::String(name.to_owned()))
        .with_context(|| format!("unknown index kind {name:?} (hnsw, hnsw_rs or flat)"))
}

/// Splits `vectors` into base and queries, computes the exact ground truth and writes the
/// dataset files.
fn prepare(
    out: &Path,
    name: &str,
    mut vectors: Vec<Vec<f32>>,
    queries: usize,
    params: &Params,
) -> Result<()> {
    if vectors.len() <= queries {
        bail!(
            "{name}: {} vectors cannot give {queries} queries and a base",
            vectors.len()
        );
    }
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let held_out = vectors.split_off(vectors.len() - queries);
    let dim = vectors[0].len();
    eprintln!(
        "{name}: {} base vectors, {queries} queries, dimension {dim}; exact ground truth",
        vectors.len()
    );
    let flat = index::new_index(IndexKind::Flat, dim, &IndexConfig::default())?;
    for (start, chunk) in vectors.chunks(INSERT_BATCH).enumerate() {
        let items: Vec<(u64, &[f32])> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| ((start * INSERT_BATCH + i) as u64, &v[..]))
            .collect();
        flat.insert_batch(&items)?;
    }
    let truth: Vec<Vec<i64>> = held_out
        .par_iter()
        .map(|q| {
            let hits = flat.search(q, params.k, &SearchParams::default(), None)?;
            Ok(hits.iter().map(|h| h.id as i64).collect())
        })
        .collect::<Result<_>>()?;
    write_npy(&dir.join("base.npy"), &vectors)?;
    write_npy(&dir.join("queries.npy"), &held_out)?;
    write_npy(&dir.join("gt.npy"), &truth)?;
    std::fs::write(dir.join("params.json"), serde_json::to_vec_pretty(params)?)?;
    Ok(())
}

pub(super) fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, rows: &[Vec<T>]) -> Result<()> {
    use npyz::WriterBuilder;
    let cols = rows.first().map_or(0, Vec::len);
    let file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&[rows.len() as u64, cols as u64])
        .writer(file)
        .begin_nd()?;
    for row in rows {
        w.extend(row.iter().copied())?;
    }
    w.finish()?;
    Ok(())
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> Result<(Vec<T>, usize)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "{}: expected a 2-d array, got shape {shape:?}",
            path.display()
        );
    }
    Ok((npy.into_vec()?, shape[1] as usize))
}

/// A `/proc/self/status` field in bytes (Linux); 0 elsewhere.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident size (`VmHWM`) to the current one (Linux; ignored elsewhere).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak memory counter ({e}); peaks include the data set");
    }
}

/// Seconds of the fastest of up to three runs of `pass` (one if the first is long enough).
fn timed(mut pass: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        pass()?;
        best = best.min(started.elapsed().as_secs_f64());
        if best >= MIN_TIMED_SECONDS {
            break;
        }
    }
    Ok(best)
}

/// Measures `kind` on the prepared `dataset` and writes its result file.
fn measure(out: &Path, dataset: &str, kind: IndexKind) -> Result<()> {
    let dir = out.join(dataset);
    let params: Params = serde_json::from_slice(
        &std::fs::read(dir.join("params.json")).context("reading params.json")?,
    )?;
    let (base, dim) = read_npy::<f32>(&dir.join("base.npy"))?;
    let (queries, qdim) = read_npy::<f32>(&dir.join("queries.npy"))?;
    let (truth, k) = read_npy::<i64>(&dir.join("gt.npy"))?;
    if dim != qdim || k != params.k {
        bail!("{dataset}: inconsistent dataset files");
    }
    let n = base.len() / dim;
    let config = IndexConfig {
        m: params.m,
        ef_construction: params.ef_construction,
        max_elements: n,
        exact_threshold: 0,
        ..IndexConfig::default()
    };

    let resident_before = status_bytes("VmRSS");
    reset_peak();
    let started = Instant::now();
    let built = index::new_index(kind, dim, &config)?;
    for (start, chunk) in base.chunks(INSERT_BATCH * dim).enumerate() {
        let items: Vec<(u64, &[f32])> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| ((start * INSERT_BATCH + i) as u64, v))
            .collect();
        built.insert_batch(&items)?;
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let peak = status_bytes("VmHWM").saturating_sub(resident_before);
    let resident = status_bytes("VmRSS").saturating_sub(resident_before);
    eprintln!("{kind}: built {n} vectors in {build_seconds:.1} s");

    let dump = dir.join(format!("dump-{kind}"));
    let _ = std::fs::remove_dir_all(&dump);
    built.save(&dump, 1)?;
    drop(built);
    let file_bytes: u64 = std::fs::read_dir(&dump)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let loaded = index::load(&dump, &config)?.index;
    let reload_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dump)?;

    let queries: Vec<&[f32]> = queries.chunks_exact(dim).collect();
    let mut sweep = Vec::new();
    for &ef in &params.ef_search {
        let search_params = SearchParams {
            ef_search: Some(ef),
            exact: false,
        };
        let search = |q: &[f32]| loaded.search(q, params.k, &search_params, None);
        let mut found = Vec::with_capacity(queries.len());
        for q in &queries {
            found.push(search(q)?);
        }
        let recall = found
            .iter()
            .zip(truth.chunks_exact(k))
            .map(|(hits, gt)| {
                let gt: HashSet<i64> = gt.iter().copied().collect();
                hits.iter().filter(|h| gt.contains(&(h.id as i64))).count() as f64 / k as f64
            })
            .sum::<f64>()
            / queries.len() as f64;
        let one = timed(|| {
            for q in &queries {
                search(q)?;
            }
            Ok(())
        })?;
        let all = timed(|| {
            queries.par_iter().try_for_each(|q| search(q).map(drop))?;
            Ok(())
        })?;
        let (qps_1, qps_all) = (queries.len() as f64 / one, queries.len() as f64 / all);
        eprintln!("{kind} ef {ef:>4}: recall@{k} {recall:.4}  {qps_1:>8.0} q/s (1 thread)  {qps_all:>8.0} q/s (all)");
        sweep.push(json!({"ef": ef, "recall": recall, "qps_1": qps_1, "qps_all": qps_all}));
    }

    let result = json!({
        "library": format!("omnibind-{kind}"),
        "version": env!("CARGO_PKG_VERSION"),
        "dataset": dataset,
        "n": n,
        "dim": dim,
        "queries": queries.len(),
        "m": params.m,
        "ef_construction": params.ef_construction,
        "k": params.k,
        "threads": rayon::current_num_threads(),
        "build_seconds": build_seconds,
        "build_rate": n as f64 / build_seconds,
        "memory_bytes_per_vector": peak as f64 / n as f64,
        "resident_bytes_per_vector": resident as f64 / n as f64,
        "file_bytes": file_bytes,
        "reload_seconds": reload_seconds,
        "sweep": sweep,
    });
    let results = out.join("results");
    std::fs::create_dir_all(&results)?;
    let path = results.join(format!("omnibind-{kind}-{dataset}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    println!(
        "{kind} on {dataset}: {:.0} vectors/s built, {:.0} B/vector peak, {:.0} B/vector resident, {file_bytes} B dump, {reload_seconds:.2} s reload",
        n as f64 / build_seconds,
        peak as f64 / n as f64,
        resident as f64 / n as f64,
    );
    Ok(())
}

/// Embeddings by the model at `model` of `count` distinct captions, composed from word
/// lists in a seeded order: the clustered, anisotropic vectors an index meets in production.
fn real_embeddings(model: &str, count: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    use rand::seq::SliceRandom;

    const COLOURS: [&str; 16] = [
        "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
        "grey", "golden", "silver", "striped", "spotted", "tiny",
    ];
    const THINGS: [&str; 40] = [
        "cat", "dog", "car", "bicycle", "house", "tree", "bird", "boat", "guitar", "lamp", "chair",
        "horse", "train", "apple", "flower", "robot", "rocket", "umbrella", "teapot", "clock",
        "phone", "camera", "shoe", "hat", "kite", "drum", "fish", "owl", "bridge", "tower",
        "piano", "violin", "truck", "balloon", "cup", "book", "key", "star", "moon", "mountain",
    ];
    const PLACES: [&str; 36] = [
        "on a beach",
        "in a forest",
        "under the rain",
        "at night",
        "in the snow",
        "on a table",
        "in a kitchen",
        "near a river",
        "in the desert",
        "on a rooftop",
        "in a museum",
        "at a market",
        "in space",
        "underwater",
        "in a garden",
        "on a street",
        "in a field",
        "at sunset",
        "in a cave",
        "on a mountain",
        "in a city",
        "at a station",
        "in a library",
        "on a bridge",
        "in fog",
        "at dawn",
        "in a park",
        "on a boat",
        "in a classroom",
        "at a concert",
        "on grass",
        "in a window",
        "on ice",
        "in a tunnel",
        "at a harbour",
        "in a meadow",
    ];
    const STYLES: [&str; 8] = [
        "a photo of",
        "a drawing of",
        "a painting of",
        "a sketch of",
        "a close-up of",
        "a toy",
        "a cartoon of",
        "a blurry photo of",
    ];
    let mut captions: Vec<String> = Vec::new();
    for style in STYLES {
        for colour in COLOURS {
            for thing in THINGS {
                for place in PLACES {
                    captions.push(format!("{style} a {colour} {thing} {place}"));
                }
            }
        }
    }
    if count > captions.len() {
        bail!("at most {} real embeddings are available", captions.len());
    }
    captions.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    captions.truncate(count);

    let spec = crate::embed::registry::ModelSpec::new("bench", model);
    let encoder =
        crate::embed::registry::load_encoder(&spec).context("loading the default model")?;
    eprintln!("real: embedding {count} captions with {}", encoder.name());
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(count);
    for batch in captions.chunks(64) {
        let inputs: Vec<crate::embed::Input> = batch
            .iter()
            .map(|c| crate::embed::Input::Text(c.clone()))
            .collect();
        for vector in encoder.embed_batch(&inputs)? {
            vectors.push(vector?);
        }
    }
    eprintln!(
        "real: {count} captions embedded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(vectors)
}
