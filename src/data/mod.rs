//! Training data for the default six-modality model, prepared from the OpenMoji emoji set.
//!
//! The data is not kept in the repository; one command makes it from a registry package on an
//! offline machine (the npm registry and Debian packages are all it needs):
//!
//! ```text
//! npm pack openmoji@17.0.0                    # writes openmoji-17.0.0.tgz
//! apt-get install espeak-ng                   # for the audio modality (or pass --no-audio)
//! omnibind data openmoji --package openmoji-17.0.0.tgz --out openmoji-data \
//!     [--limit N] [--image-size 224] [--seed 17] [--no-audio] [--heldout FILE]
//! ```
//!
//! The `.tgz` is read directly ([`package`]). For every emoji of `data/openmoji.csv` whose
//! colour SVG renders, the output directory gets:
//! - `images/<HEXCODE>.png`: the SVG rendered with resvg on white, `--image-size` square
//!   ([`render`]);
//! - captions (in the manifest) from the annotation, subgroup and tags through fixed
//!   templates ([`package::captions`]);
//! - `audio/<HEXCODE>-<k>.wav`: the annotation spoken by espeak-ng, [`AUDIO_VARIANTS`] voice,
//!   rate and pitch variants ([`audio`]); the audio is paired with the image, not the text;
//! - `depth/<HEXCODE>.png` (16-bit, mm) and `thermal/<HEXCODE>.png` (8-bit): **synthetic**
//!   maps derived from the emoji's shape and colours, not sensor data ([`render`]);
//! - `imu/<HEXCODE>-<k>.npy` (`[6, 2000]` f32) for motion emoji only: **synthetic** traces of
//!   the emoji's motion class, [`IMU_PER_ITEM`] per emoji ([`imu`] documents the generator and
//!   the annotation rules that pick the classes).
//!
//! Also written: `manifest.jsonl` (one [`ManifestItem`] per line, CSV order), `summary.json`
//! ([`Summary`]: counts per modality and split, skipped SVGs, tool versions, seed),
//! `heldout.txt` (the split used) and `LICENSE-DATA.md` (OpenMoji's CC BY-SA 4.0
//! attribution, which covers the derived files).
//!
//! Split: each item is marked `train` or `heldout` by the fixed held-out list
//! `models/default/heldout.txt` ([`split`]), read when present; without it the list is
//! computed by the same rule from the whole package (also with `--limit`).
//!
//! Determinism: the same package, options and seed give byte-identical files (all randomness
//! comes from [`rng`], seeded per item; the manifest keeps the CSV order whatever the thread
//! scheduling). WAV files are as deterministic as espeak-ng itself (1.51 is).

pub mod audio;
pub mod imu;
pub mod package;
pub mod render;
pub mod rng;
pub mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use package::Emoji;
use rng::Rng;

/// Spoken variants per emoji.
pub const AUDIO_VARIANTS: usize = 3;
/// IMU traces per motion emoji.
pub const IMU_PER_ITEM: usize = 4;
/// The default seed.
pub const DEFAULT_SEED: u64 = 17;
/// Version of resvg used for rendering (recorded in the summary).
const RESVG_VERSION: &str = "0.49";

/// Options of [`openmoji`].
#[derive(Debug, Clone)]
pub struct OpenMojiOptions {
    /// The `openmoji-<version>.tgz` from `npm pack`.
    pub package: PathBuf,
    /// Output directory (created; must not hold a dataset already).
    pub out: PathBuf,
    /// Only the first N rows of the CSV.
    pub limit: Option<usize>,
    pub image_size: u32,
    pub seed: u64,
    /// Speak the annotations with espeak-ng.
    pub audio: bool,
    /// Held-out list to read; `None` computes it with [`split::heldout`].
    pub heldout: Option<PathBuf>,
}

impl OpenMojiOptions {
    pub fn new(package: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        OpenMojiOptions {
            package: package.into(),
            out: out.into(),
            limit: None,
            image_size: 224,
            seed: DEFAULT_SEED,
            audio: true,
            heldout: None,
        }
    }
}

/// Train or held-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

/// One spoken annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFile {
    pub path: String,
    #[serde(flatten)]
    pub voice: audio::Voice,
}

/// One line of `manifest.jsonl`; paths are relative to the dataset directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestItem {
    pub hexcode: String,
    pub emoji: String,
    pub group: String,
    pub subgroup: String,
    pub annotation: String,
    pub tags: Vec<String>,
    pub captions: Vec<String>,
    pub split: Split,
    pub image: String,
    /// Spoken annotation, paired with the image (empty with `--no-audio`).
    pub audio: Vec<AudioFile>,
    /// Synthetic depth map, 16-bit PNG in mm.
    pub depth: String,
    /// Synthetic thermal image, 8-bit PNG.
    pub thermal: String,
    /// Synthetic IMU traces (`.npy`), for motion emoji only.
    pub imu: Vec<String>,
    pub imu_class: Option<String>,
}

/// An emoji left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub hexcode: String,
    pub reason: String,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub source: BTreeMap<String, String>,
    pub rows: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    pub image_size: u32,
    pub items: usize,
    pub splits: BTreeMap<String, usize>,
    /// Files (captions for `text`) per modality and split.
    pub modalities: BTreeMap<String, BTreeMap<String, usize>>,
    /// Emoji per IMU class.
    pub imu_classes: BTreeMap<String, usize>,
    pub skipped: Vec<Skipped>,
    pub heldout_source: String,
    pub tools: BTreeMap<String, String>,
}

enum Outcome {
    Item(Box<ManifestItem>),
    Skipped(Skipped),
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn valid_hexcode(h: &str) -> bool {
    !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn process(
    e: &Emoji,
    svg: Option<&Vec<u8>>,
    split: Split,
    opts: &OpenMojiOptions,
) -> Result<Outcome> {
    let hex = &e.hexcode;
    let skip = |reason: String| {
        Ok(Outcome::Skipped(Skipped {
            hexcode: hex.clone(),
            reason,
        }))
    };
    if !valid_hexcode(hex) {
        return skip("hexcode is not hexadecimal".into());
    }
    let Some(svg) = svg else {
        return skip("no colour SVG in the package".into());
    };
    let rendering = match render::render_svg(svg, opts.image_size) {
        Ok(r) => r,
        Err(err) => return skip(format!("{err:#}")),
    };
    if rendering.rgba.iter().all(|p| p[3] == 0) {
        return skip("SVG renders empty".into());
    }
    let out = &opts.out;
    let image = format!("images/{hex}.png");
    write(&out.join(&image), &render::png(&rendering.on_white())?)?;
    let depth = format!("depth/{hex}.png");
    let mut rng = Rng::for_key(opts.seed, &format!("depth:{hex}"));
    write(
        &out.join(&depth),
        &render::png(&render::depth_mm(&rendering, &mut rng))?,
    )?;
    let thermal = format!("thermal/{hex}.png");
    let mut rng = Rng::for_key(opts.seed, &format!("thermal:{hex}"));
    write(
        &out.join(&thermal),
        &render::png(&render::thermal(&rendering, &mut rng))?,
    )?;
    let class = imu::class_of(&e.annotation);
    let mut imu_paths = Vec::new();
    if let Some(class) = class {
        for k in 0..IMU_PER_ITEM {
            let path = format!("imu/{hex}-{k}.npy");
            let mut rng = Rng::for_key(opts.seed, &format!("imu:{hex}:{k}"));
            write(
                &out.join(&path),
                &imu::to_npy(&imu::generate(class, &mut rng))?,
            )?;
            imu_paths.push(path);
        }
    }
    let mut audio_files = Vec::new();
    if opts.audio {
        let mut rng = Rng::for_key(opts.seed, &format!("audio:{hex}"));
        for (k, voice) in audio::variants(&mut rng, AUDIO_VARIANTS)
            .into_iter()
            .enumerate()
        {
            let path = format!("audio/{hex}-{k}.wav");
            audio::speak(&e.annotation, &voice, &out.join(&path))
                .with_context(|| format!("speaking the annotation of {hex}"))?;
            audio_files.push(AudioFile { path, voice });
        }
    }
    Ok(Outcome::Item(Box::new(ManifestItem {
        hexcode: hex.clone(),
        emoji: e.emoji.clone(),
        group: e.group.clone(),
        subgroup: e.subgroup.clone(),
        annotation: e.annotation.clone(),
        tags: e.tags.clone(),
        captions: package::captions(e),
        split,
        image,
        audio: audio_files,
        depth,
        thermal,
        imu: imu_paths,
        imu_class: class.map(|c| c.name.to_owned()),
    })))
}

const LICENSE: &str = "# Licence of this dataset

All emoji in this dataset are designed by OpenMoji - the open-source emoji and icon project
(https://openmoji.org). License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).

Source: the npm package {package} (sha256 {sha256}).

Everything derived from OpenMoji here is an adaptation of it and is shared under the same
licence, CC BY-SA 4.0:
- `images/`: the colour SVGs rendered to PNG on a white background;
- captions in `manifest.jsonl`: OpenMoji's annotations, subgroups and tags put into sentence
  templates;
- `audio/`: the annotations spoken by the espeak-ng speech synthesiser;
- `depth/` and `thermal/`: synthetic depth and thermal renderings computed from each emoji's
  shape and colours. They are not measurements of anything.

`imu/` holds synthetic inertial traces made by a signal generator per motion class (no
OpenMoji content); they are distributed with the rest under CC BY-SA 4.0.

Changes were made: rendering, resizing, compositing, speech synthesis and the synthetic maps
described above.
";

/// Reads the held-out list, or computes it from the whole package.
fn heldout_set(opts: &OpenMojiOptions, all: &[Emoji]) -> Result<(BTreeSet<String>, String)> {
    match &opts.heldout {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the held-out list {}", path.display()))?;
            Ok((split::read_file(&text), path.display().to_string()))
        }
        None => Ok((
            split::heldout(all),
            "computed by the rule (models/default/heldout.txt not used)".into(),
        )),
    }
}

/// `omnibind data openmoji`: builds the dataset directory; returns its summary.
pub fn openmoji(opts: &OpenMojiOptions) -> Result<Summary> {
    if opts.image_size < 16 || opts.image_size > 4096 {
        bail!("--image-size must be between 16 and 4096");
    }
    if opts.out.join("manifest.jsonl").exists() {
        bail!(
            "{} already holds a dataset (manifest.jsonl): remove it or choose another --out",
            opts.out.display()
        );
    }
    let mut tools = BTreeMap::new();
    tools.insert("omnibind".into(), env!("CARGO_PKG_VERSION").to_owned());
    tools.insert("resvg".into(), RESVG_VERSION.to_owned());
    if opts.audio {
        tools.insert("espeak-ng".into(), audio::espeak_version()?);
    }
    let pkg = package::read_package(&opts.package)?;
    let (heldout, heldout_source) = heldout_set(opts, &pkg.emojis)?;
    let rows: &[Emoji] = match opts.limit {
        Some(n) => &pkg.emojis[..n.min(pkg.emojis.len())],
        None => &pkg.emojis,
    };
    let mut dirs = vec!["images", "depth", "thermal", "imu"];
    if opts.audio {
        dirs.push("audio");
    }
    for d in dirs {
        fs::create_dir_all(opts.out.join(d))
            .with_context(|| format!("creating {}", opts.out.join(d).display()))?;
    }

    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} emoji, eta {eta}")
            .expect("valid template"),
    );
    let outcomes: Vec<Outcome> = rows
        .par_iter()
        .map(|e| {
            let split = if heldout.contains(&e.hexcode) {
                Split::Heldout
            } else {
                Split::Train
            };
            let r = process(e, pkg.svgs.get(&e.hexcode), split, opts);
            bar.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();

    let mut manifest = String::new();
    let mut skipped = Vec::new();
    let mut splits: BTreeMap<String, usize> = BTreeMap::new();
    let mut modalities: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut imu_classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut items = 0;
    for o in outcomes {
        let item = match o {
            Outcome::Item(item) => item,
            Outcome::Skipped(s) => {
                skipped.push(s);
                continue;
            }
        };
        items += 1;
        let split = item.split.name().to_owned();
        *splits.entry(split.clone()).or_default() += 1;
        let mut add = |m: &str, n: usize| {
            *modalities
                .entry(m.to_owned())
                .or_default()
                .entry(split.clone())
                .or_default() += n;
        };
        add("image", 1);
        add("text", item.captions.len());
        add("depth", 1);
        add("thermal", 1);
        add("audio", item.audio.len());
        add("imu", item.imu.len());
        if let Some(c) = &item.imu_class {
            *imu_classes.entry(c.clone()).or_default() += 1;
        }
        manifest.push_str(&serde_json::to_string(&item)?);
        manifest.push('\n');
    }
    let mut source = BTreeMap::new();
    source.insert("package".into(), pkg.name.clone());
    source.insert("version".into(), pkg.version.clone());
    source.insert("sha256".into(), pkg.sha256.clone());
    let summary = Summary {
        source,
        rows: pkg.emojis.len(),
        limit: opts.limit,
        seed: opts.seed,
        image_size: opts.image_size,
        items,
        splits,
        modalities,
        imu_classes,
        skipped,
        heldout_source,
        tools,
    };
    let out = &opts.out;
    let pkg_label = format!("{}@{}", pkg.name, pkg.version);
    write(&out.join("manifest.jsonl"), manifest.as_bytes())?;
    write(
        &out.join("heldout.txt"),
        split::write_file(&heldout, &pkg_label).as_bytes(),
    )?;
    write(
        &out.join("LICENSE-DATA.md"),
        LICENSE
            .replace("{package}", &pkg_label)
            .replace("{sha256}", &pkg.sha256)
            .as_bytes(),
    )?;
    let mut json = serde_json::to_string_pretty(&summary)?;
    json.push('\n');
    write(&out.join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

/// Reads `manifest.jsonl` back.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestItem>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests;
