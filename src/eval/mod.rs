//! `omnibind eval`: cross-modal retrieval and zero-shot classification of a model over an
//! OpenMoji dataset made by `omnibind data openmoji` ([`crate::data`]).
//!
//! ```text
//! omnibind eval --model models/default --data openmoji-data [--split heldout] [--limit N] \
//!     [--json eval.json]
//! ```
//!
//! **Items and vectors.** The items of the chosen split (`heldout` by default; `train` or
//! `all`), in manifest order, the first `--limit` of them. Each item gets at most one vector per
//! modality, for the modalities the model has: `image`; `text` = its *first* caption (the bare
//! annotation); `audio` = its *first* WAV (`audio/<HEX>-0.wav`, one voice variant; the other
//! variants are not used); `depth`; `thermal`; `imu` = its *first* trace (`imu/<HEX>-0.npy`,
//! motion emoji only). Inputs are embedded in batches of `--batch-size` per modality; an input
//! that fails to embed stops the evaluation.
//!
//! **Retrieval** ([`metrics::recall`]). For every ordered pair of distinct modalities
//! (query → target), over the items having both: each item's query vector ranks all those
//! items' target vectors by cosine similarity (ties: earlier manifest item first); recall@k is
//! the share of queries whose *own item's* target is among the top k, for k = 1, 5, 10.
//! `chance@10` is `min(10, N) / N`. A pair is *emergent* when the default recipe never trains
//! its two modalities together ([`metrics::trained_pair`]: trained are image–text and
//! image–audio/depth/thermal/IMU; everything else, e.g. audio–text or depth–thermal, is
//! emergent). IMU exists only for motion emoji and emoji share a motion class (a skin-tone
//! variant has the same class as its base), so exact-item recall involving IMU is capped by
//! the look-alikes; pairs with IMU also report `class R@1`: a hit when the top target's item has
//! the query item's IMU class.
//!
//! **Zero-shot classification.** The classes are the OpenMoji subgroups of the evaluated items
//! (sorted by name; hyphens become spaces in prompts). Each class vector is the normalised mean
//! of the text embeddings of [`PROMPTS`] (the caption templates of
//! [`crate::data::package::ANNOTATION_TEMPLATES`] with the subgroup in place of the
//! annotation). Each item's image, audio, depth, thermal and IMU vector is assigned the nearest
//! class by cosine (ties: first class); accuracy per modality is reported with the chance level
//! `1 / #classes` and the majority-class rate of those items. Needs the text tower.
//!
//! Output: Markdown tables on standard output ([`table`]), progress on standard error,
//! optionally the same figures as JSON ([`Report`]). Everything is in a fixed order.

pub mod metrics;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::data::{read_manifest, ManifestItem, Split};
use crate::embed::{Encoder, Input, Modality};

/// Class prompt templates of the zero-shot classification; `{subgroup}` is replaced by the
/// subgroup name with spaces for hyphens.
pub const PROMPTS: &[&str] = &[
    "an emoji of {subgroup}",
    "a picture of {subgroup}",
    "an icon showing {subgroup}",
];

/// Modalities in the order of the tables.
pub const ORDER: [Modality; 6] = [
    Modality::Image,
    Modality::Text,
    Modality::Audio,
    Modality::Depth,
    Modality::Thermal,
    Modality::Imu,
];

/// Which items to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SplitChoice {
    Heldout,
    Train,
    All,
}

impl SplitChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitChoice::Heldout => "heldout",
            SplitChoice::Train => "train",
            SplitChoice::All => "all",
        }
    }

    fn admits(self, s: Split) -> bool {
        match self {
            SplitChoice::All => true,
            SplitChoice::Heldout => s == Split::Heldout,
            SplitChoice::Train => s == Split::Train,
        }
    }
}

/// Options of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Dataset directory (holding `manifest.jsonl`).
    pub data: PathBuf,
    pub split: SplitChoice,
    /// Only the first N items of the split.
    pub limit: Option<usize>,
    /// Inputs per `embed_batch` call.
    pub batch_size: usize,
    /// Print progress on standard error.
    pub progress: bool,
}

impl EvalOptions {
    pub fn new(data: impl Into<PathBuf>) -> Self {
        EvalOptions {
            data: data.into(),
            split: SplitChoice::Heldout,
            limit: None,
            batch_size: 32,
            progress: false,
        }
    }
}

/// One row of the retrieval table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    pub query: Modality,
    pub target: Modality,
    pub emergent: bool,
    /// Queries: items having both modalities.
    pub n: usize,
    /// Gallery: items having the target modality, all ranked for every query.
    pub gallery: usize,
    pub r_at_1: f64,
    pub r_at_5: f64,
    pub r_at_10: f64,
    pub chance_at_10: f64,
    /// IMU-class recall@1, @5, @10 (pairs involving IMU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_r_at: Option<[f64; 3]>,
}

/// One row of the classification table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassResult {
    pub modality: Modality,
    pub n: usize,
    pub accuracy: f64,
    /// Subgroups present among these items.
    pub classes_present: usize,
    /// `1 / classes` (all classes of the evaluated items compete).
    pub chance: f64,
    /// Share of the most frequent subgroup among these items.
    pub majority: f64,
}

/// Everything `omnibind eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub dim: usize,
    pub data: String,
    pub split: SplitChoice,
    pub items: usize,
    /// Vectors per modality (items having it).
    pub vectors: BTreeMap<Modality, usize>,
    pub retrieval: Vec<PairResult>,
    /// Subgroups used as classes, in order (empty without a text tower).
    pub classes: Vec<String>,
    pub prompts: Vec<String>,
    pub classification: Vec<ClassResult>,
}

/// The file (or text) of an item for a modality, per the module header; `None` if it has none.
fn source(item: &ManifestItem, m: Modality) -> Option<String> {
    match m {
        Modality::Image => Some(item.image.clone()),
        Modality::Text => item.captions.first().cloned(),
        Modality::Audio => item.audio.first().map(|a| a.path.clone()),
        Modality::Depth => Some(item.depth.clone()),
        Modality::Thermal => Some(item.thermal.clone()),
        Modality::Imu => item.imu.first().cloned(),
        Modality::Video => None,
    }
    .filter(|s| !s.is_empty())
}

fn progress(on: bool, msg: impl FnOnce() -> String) {
    if on {
        eprintln!("{}", msg());
    }
}

/// Embeds `inputs` in batches; `labels` name them in errors.
fn embed_all(
    encoder: &dyn Encoder,
    inputs: Vec<Input>,
    labels: &[String],
    batch: usize,
    mut done: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(inputs.len());
    for (chunk, names) in inputs.chunks(batch.max(1)).zip(labels.chunks(batch.max(1))) {
        let results = encoder
            .embed_batch(chunk)
            .map_err(|e| anyhow!("embedding a batch: {e}"))?;
        for (r, name) in results.into_iter().zip(names) {
            out.push(r.map_err(|e| anyhow!("{name}: {e}"))?);
        }
        done(out.len());
    }
    Ok(out)
}

/// Loads the split's items, embeds them with `encoder` and computes the report.
pub fn evaluate(encoder: &dyn Encoder, opts: &EvalOptions) -> Result<Report> {
    let manifest = opts.data.join("manifest.jsonl");
    let mut items: Vec<ManifestItem> = read_manifest(&manifest)?
        .into_iter()
        .filter(|i| opts.split.admits(i.split))
        .collect();
    if let Some(n) = opts.limit {
        items.truncate(n);
    }
    if items.is_empty() {
        bail!(
            "no items of split `{}` in {} (try --split all)",
            opts.split.as_str(),
            manifest.display()
        );
    }
    let has: BTreeSet<Modality> = encoder.modalities().iter().copied().collect();
    let modalities: Vec<Modality> = ORDER.into_iter().filter(|m| has.contains(m)).collect();
    progress(opts.progress, || {
        format!(
            "{} items, modalities: {}",
            items.len(),
            modalities
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });

    // vectors[m][i]: item i's vector of modality m.
    let mut vectors: BTreeMap<Modality, Vec<Option<Vec<f32>>>> = BTreeMap::new();
    for &m in &modalities {
        let mut idx = Vec::new();
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(src) = source(item, m) else { continue };
            let input = if m == Modality::Text {
                Input::Text(src.clone())
            } else {
                let path = opts.data.join(&src);
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                Input::Bytes {
                    modality: m,
                    bytes: bytes.into(),
                }
            };
            idx.push(i);
            inputs.push(input);
            labels.push(format!("{} {m} ({src})", item.hexcode));
        }
        let total = inputs.len();
        let embedded = embed_all(encoder, inputs, &labels, opts.batch_size, |d| {
            progress(opts.progress, || format!("{m}: {d}/{total}"))
        })?;
        let mut per_item = vec![None; items.len()];
        for (i, v) in idx.into_iter().zip(embedded) {
            per_item[i] = Some(v);
        }
        vectors.insert(m, per_item);
    }

    let mut retrieval = Vec::new();
    for &q in &modalities {
        for &t in &modalities {
            if q == t {
                continue;
            }
            let (qv, tv) = (&vectors[&q], &vectors[&t]);
            // The gallery: every item with the target modality. The queries: those of its
            // items that also have the query modality.
            let gallery: Vec<usize> = (0..items.len()).filter(|&i| tv[i].is_some()).collect();
            let (mut queries, mut own) = (Vec::new(), Vec::new());
            for (j, &i) in gallery.iter().enumerate() {
                if let Some(v) = &qv[i] {
                    queries.push(v.clone());
                    own.push(j);
                }
            }
            if queries.is_empty() {
                continue;
            }
            let targets: Vec<Vec<f32>> = gallery.iter().map(|&i| tv[i].clone().unwrap()).collect();
            // IMU pairs are also scored by motion class (items without IMU have none).
            let class = |i: usize| items[i].imu_class.clone().unwrap_or_default();
            let classes: Option<(Vec<String>, Vec<String>)> =
                (q == Modality::Imu || t == Modality::Imu).then(|| {
                    (
                        own.iter().map(|&j| class(gallery[j])).collect(),
                        gallery.iter().map(|&i| class(i)).collect(),
                    )
                });
            let labels = classes
                .as_ref()
                .map(|(queries, targets)| metrics::Labels { queries, targets });
            let r = metrics::recall(&queries, &own, &targets, labels);
            retrieval.push(PairResult {
                query: q,
                target: t,
                emergent: !metrics::trained_pair(q, t),
                n: r.n,
                gallery: r.gallery,
                r_at_1: r.at[0],
                r_at_5: r.at[1],
                r_at_10: r.at[2],
                chance_at_10: metrics::chance_at(10, r.gallery),
                class_r_at: r.label_at,
            });
        }
    }

    let mut classes = Vec::new();
    let mut prompts = Vec::new();
    let mut classification = Vec::new();
    if has.contains(&Modality::Text) {
        classes = items
            .iter()
            .map(|i| i.subgroup.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        prompts = PROMPTS.iter().map(|p| p.to_string()).collect();
        let texts: Vec<String> = classes
            .iter()
            .flat_map(|c| PROMPTS.iter().map(move |p| prompt(p, c)))
            .collect();
        let inputs = texts.iter().cloned().map(Input::Text).collect();
        let embedded = embed_all(encoder, inputs, &texts, opts.batch_size, |d| {
            progress(opts.progress, || format!("prompts: {d}/{}", texts.len()))
        })?;
        let class_vecs: Vec<Vec<f32>> = embedded
            .chunks(PROMPTS.len())
            .map(metrics::mean_normalised)
            .collect();
        let class_of: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(k, c)| (c.as_str(), k))
            .collect();
        for &m in &modalities {
            if m == Modality::Text {
                continue;
            }
            let mut truth = Vec::new();
            let mut correct = 0usize;
            for (i, v) in vectors[&m].iter().enumerate() {
                let Some(v) = v else { continue };
                let want = class_of[items[i].subgroup.as_str()];
                truth.push(want);
                correct += usize::from(metrics::nearest(v, &class_vecs) == Some(want));
            }
            if truth.is_empty() {
                continue;
            }
            let present = truth.iter().collect::<BTreeSet<_>>().len();
            classification.push(ClassResult {
                modality: m,
                n: truth.len(),
                accuracy: correct as f64 / truth.len() as f64,
                classes_present: present,
                chance: 1.0 / classes.len() as f64,
                majority: metrics::majority_rate(&truth),
            });
        }
    }

    Ok(Report {
        model: encoder.name().to_owned(),
        dim: encoder.dim(),
        data: opts.data.display().to_string(),
        split: opts.split,
        items: items.len(),
        vectors: vectors
            .iter()
            .map(|(m, v)| (*m, v.iter().flatten().count()))
            .collect(),
        retrieval,
        classes,
        prompts,
        classification,
    })
}

/// A class prompt: `template` with the subgroup (hyphens as spaces).
pub fn prompt(template: &str, subgroup: &str) -> String {
    template.replace("{subgroup}", &subgroup.replace('-', " "))
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &Report, path: &Path) -> Result<()> {
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
