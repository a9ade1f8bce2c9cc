//! Nearest-neighbour indexes over embedding vectors (exact flat index and HNSW).
//!
//! This module owns the in-memory search structures and their dump files: it validates and
//! L2-normalises vectors, answers top-k cosine queries with optional id filters, deletes,
//! rebuilds, and saves/loads itself to a directory. It knows nothing of HTTP, of the durable
//! item store or of encoders (it never imports axum, `crate::store` or `crate::embed`): the
//! store is the source of truth, and an index dump is a cache the caller may always rebuild
//! from it. Failures come back as an [`IndexError`]: bad vectors, missing, truncated or
//! corrupt dump files give errors, not panics. The one gap is an `hnsw_rs` dump whose damaged
//! files come with checksums forged to match: it reaches hnsw_rs's loader, whose panics are
//! caught but whose `process::exit` calls (on some read errors) cannot be.
//!
//! - [`FlatIndex`] ([`flat`]): exact scan. Small collections, `exact: true` queries, and the
//!   oracle of the tests.
//! - `hnsw` (the default, [`hnsw`]): approximate search on the project's own HNSW graph, with
//!   tombstone deletes, background rebuilds and an exact fallback for small collections.
//! - `hnsw_rs`: the same layer on an hnsw_rs graph, kept for comparison (BENCHMARKS.md).
//!
//! Scores are cosine similarities: vectors are normalised on insert and the score of a hit is
//! the dot product of the normalised query and item, higher is better. Results are sorted by
//! score descending, ties by ascending id.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod flat;
pub mod hnsw;
mod persist;
mod vector;

#[cfg(test)]
mod tests;

pub use flat::FlatIndex;
pub use hnsw::BATCH_CHUNK;
pub(crate) use hnsw::{HnswIndex, HnswRsIndex};
pub use vector::normalised;

/// Result of index operations.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The item's id, as given on insert.
    pub id: u64,
    /// Cosine similarity with the query, in [-1, 1] up to rounding; higher is closer.
    pub score: f32,
}

/// Per-query options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchParams {
    /// Width of the HNSW candidate list; `None` uses [`IndexConfig::ef_search`]. Raised to `k`
    /// when smaller. Ignored by exact searches.
    pub ef_search: Option<usize>,
    /// Scan every vector instead of walking the graph: exact results, linear cost.
    pub exact: bool,
}

/// The kinds of index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Approximate search on a hierarchical navigable small-world graph (the project's own).
    #[default]
    Hnsw,
    /// The same on an hnsw_rs graph: slower and larger, kept for comparison.
    #[serde(rename = "hnsw_rs")]
    HnswRs,
    /// Exact search by scanning every vector.
    Flat,
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexKind::Hnsw => "hnsw",
            IndexKind::HnswRs => "hnsw_rs",
            IndexKind::Flat => "flat",
        })
    }
}

/// Tuning of an index. Fields a kind does not use are ignored by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// HNSW: links per point and layer (layer 0 keeps twice as many). 2..=255.
    pub m: usize,
    /// HNSW: candidate-list width while inserting; higher builds slower and recalls better.
    /// Must exceed `2 * m`: hnsw_rs applies its neighbour-selection heuristic on layer 0 only
    /// when it has more than `2 * m` candidates, and without it clustered data give poorly
    /// connected graphs (recall@10 measured at 0.72 with m = 16, ef_construction = 32).
    pub ef_construction: usize,
    /// HNSW: default candidate-list width while searching.
    pub ef_search: usize,
    /// Expected number of items, used to pre-allocate. A hint, not a limit.
    pub max_elements: usize,
    /// HNSW: below this many live items searches scan the vectors exactly (faster and exact
    /// for small collections). 0 always uses the graph.
    pub exact_threshold: usize,
    /// HNSW: fraction of tombstoned graph points from which [`Index::needs_rebuild`] is true.
    pub rebuild_ratio: f64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            max_elements: 10_000,
            exact_threshold: 1_000,
            rebuild_ratio: 0.2,
        }
    }
}

/// Largest HNSW candidate-list width (`ef_construction`, `ef_search`, default or per query).
/// Recall stops improving long before it (1000 is already generous), and it keeps every
/// value representable in the store's 32-bit fields.
pub const MAX_EF: usize = 4096;

/// Checks the HNSW parameters a collection may set: `m` in 2..=255, `ef_construction` above
/// `2 * m` and at most [`MAX_EF`], `ef_search` in 1..=[`MAX_EF`]. Values are checked as given,
/// before any narrowing to the store's 32-bit fields.
pub fn validate_hnsw_params(m: usize, ef_construction: usize, ef_search: usize) -> Result<()> {
    let invalid = |reason: String| Err(IndexError::InvalidConfig(reason));
    if !(2..=255).contains(&m) {
        return invalid(format!("m must be in 2..=255, got {m}"));
    }
    if ef_construction <= 2 * m || ef_construction > MAX_EF {
        return invalid(format!(
            "ef_construction must exceed 2 * m = {} and be at most {MAX_EF}, got {ef_construction}",
            2 * m
        ));
    }
    validate_ef_search(ef_search)
}

/// Checks a candidate-list width for searches: 1..=[`MAX_EF`].
pub fn validate_ef_search(ef_search: usize) -> Result<()> {
    if !(1..=MAX_EF).contains(&ef_search) {
        return Err(IndexError::InvalidConfig(format!(
            "ef_search must be in 1..={MAX_EF}, got {ef_search}"
        )));
    }
    Ok(())
}

impl IndexConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(IndexError::InvalidConfig(reason));
        validate_hnsw_params(self.m, self.ef_construction, self.ef_search)?;
        if !(self.rebuild_ratio > 0.0 && self.rebuild_ratio <= 1.0) {
            return invalid(format!(
                "rebuild_ratio must be in (0, 1], got {}",
                self.rebuild_ratio
            ));
        }
        Ok(())
    }
}

/// Errors of the index layer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector or query of the wrong length.
    #[error("vector has dimension {got}, the index expects {expected}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A NaN or infinite component.
    #[error("vector component {position} is {value}; NaN and infinite values are not allowed")]
    NonFinite {
        /// Index of the first offending component.
        position: usize,
        /// Its value.
        value: f32,
    },
    /// An all-zero vector, which has no direction and cannot be normalised.
    #[error(
        "vector is all zeros; a zero vector has no direction and cannot be compared by cosine"
    )]
    ZeroVector,
    /// Dimension 0 or an out-of-range configuration field.
    #[error("invalid index configuration: {0}")]
    InvalidConfig(String),
    /// A file-system failure while saving or loading.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dump that fails its checksums or consistency checks. Rebuild from the store.
    #[error("corrupt index dump at {path}: {reason}")]
    Corrupt {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A dump written by another version of the layout. Rebuild from the store.
    #[error(
        "index dump format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version in the manifest.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}

/// A vector index. Every method takes `&self`: implementations lock internally, so one
/// index can be shared between threads (`Arc<dyn Index>`) and searched while it is written.
pub trait Index: Send + Sync {
    /// The kind of this index.
    fn kind(&self) -> IndexKind;

    /// Dimension of the vectors.
    fn dim(&self) -> usize;

    /// Number of live items.
    fn len(&self) -> usize;

    /// True when the index holds no live item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `vector` under `id`, replacing the vector of an existing `id`. The vector is
    /// validated (dimension, finite values, non-zero) and stored normalised.
    fn insert(&self, id: u64, vector: &[f32]) -> Result<()>;

    /// Inserts many vectors as [`Index::insert`] would one by one (a later duplicate id wins).
    /// Every vector is validated first: on error nothing is inserted.
    fn insert_batch(&self, items: &[(u64, &[f32])]) -> Result<()>;

    /// Deletes `id`; returns whether it was present.
    fn delete(&self, id: u64) -> bool;

    /// Whether `id` is a live item.
    fn contains(&self, id: u64) -> bool;

    /// Ids of the live items, in no particular order.
    fn ids(&self) -> Vec<u64>;

    /// Whether `id` is live with exactly the vector [`Index::insert`] would store for `vector`.
    /// False for an invalid `vector`.
    fn holds(&self, id: u64, vector: &[f32]) -> bool;

    /// The `k` items most similar to `query`, best first.
    ///
    /// `filter`, when given, is evaluated on ids during the search (not on its output), so up
    /// to `k` accepted items come back even when most items are rejected. It runs while the
    /// index is read-locked: it must not call back into the index. When it accepts fewer than
    /// `k` live items, an HNSW index walks its graph and then scans all vectors to make sure.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>>;

    /// Writes a dump of the index to `dir` (created if missing), replacing any earlier dump
    /// there crash-safely. `stamp` is stored in the manifest for the caller to compare later
    /// (see [`read_dump_info`]), for instance the store's generation at the time of the save.
    /// One save per directory at a time. Searches continue during a save; writes wait for it.
    fn save(&self, dir: &Path, stamp: u64) -> Result<()>;

    /// Whether deletions have degraded the index enough that [`Index::rebuild`] is worth it.
    fn needs_rebuild(&self) -> bool {
        false
    }

    /// Rebuilds internal structures from the live vectors. Searches, inserts and deletes may
    /// continue from other threads meanwhile. Returns false if another rebuild was running
    /// (nothing done).
    fn rebuild(&self) -> Result<bool> {
        Ok(true)
    }
}

/// Creates an empty index of `kind` for vectors of dimension `dim`.
pub fn new_index(kind: IndexKind, dim: usize, config: &IndexConfig) -> Result<Box<dyn Index>> {
    Ok(match kind {
        IndexKind::Flat => Box::new(FlatIndex::new(dim, config)?),
        IndexKind::Hnsw => Box::new(HnswIndex::new(dim, config)?),
        IndexKind::HnswRs => Box::new(HnswRsIndex::new(dim, config)?),
    })
}

/// An index read back from a dump, with the stamp it was saved with.
pub struct LoadedIndex {
    /// The index.
    pub index: Box<dyn Index>,
    /// The `stamp` passed to [`Index::save`].
    pub stamp: u64,
}

impl std::fmt::Debug for LoadedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedIndex")
            .field("kind", &self.index.kind())
            .field("dim", &self.index.dim())
            .field("len", &self.index.len())
            .field("stamp", &self.stamp)
            .finish()
    }
}

/// What a dump's manifest says, read without loading the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInfo {
    /// Kind of the dumped index.
    pub kind: IndexKind,
    /// Dimension of its vectors.
    pub dim: usize,
    /// Number of live items.
    pub len: usize,
    /// The `stamp` passed to [`Index::save`].
    pub stamp: u64,
}

/// Reads the manifest of the dump in `dir`: the caller compares `stamp` with the store to
/// decide whether the dump is stale before paying for [`load`].
pub fn read_dump_info(dir: &Path) -> Result<DumpInfo> {
    let manifest = persist::Manifest::read(dir)?;
    Ok(DumpInfo {
        kind: manifest.kind,
        dim: manifest.dim,
        len: manifest.live,
        stamp: manifest.stamp,
    })
}

/// Loads the dump in `dir`, of whichever kind it is.
///
/// Graph-shaping parameters of an HNSW dump (`m`, `ef_construction`) come from the dump;
/// the others (`ef_search`, `exact_threshold`, `rebuild_ratio`, `max_elements`) from `config`.
/// Any missing, truncated, corrupt or foreign file gives an error, never a panic: rebuild the
/// index from the store then.
pub fn load(dir: &Path, config: &IndexConfig) -> Result<LoadedIndex> {
    let manifest = persist::Manifest::read(dir)?;
    let index: Box<dyn Index> = match manifest.kind {
        IndexKind::Flat => Box::new(FlatIndex::load_manifest(dir, &manifest, config)?),
        IndexKind::Hnsw => Box::new(HnswIndex::load_manifest(dir, &manifest, config)?),
        IndexKind::HnswRs => Box::new(HnswRsIndex::load_manifest(dir, &manifest, config)?),
    };
    Ok(LoadedIndex {
        index,
        stamp: manifest.stamp,
    })
}

/// What [`catch_up`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Items the index already held with the source's vector.
    pub kept: usize,
    /// Items inserted, or replaced because their vector differed.
    pub inserted: usize,
    /// Items the source does not have, deleted from the index.
    pub deleted: usize,
}

/// Brings `index` in line with `source`, the complete list of items that should be live: items
/// missing or holding another vector are (re)inserted, items absent from `source` are deleted.
///
/// On an empty index this is a build from scratch; on a stale dump it costs one pass over
/// `source` plus the work for what changed, so a restart after a crash need not rebuild the
/// whole graph. `source` may fail with the caller's error type (say, a store read).
pub fn catch_up<E>(
    index: &dyn Index,
    source: impl IntoIterator<Item = std::result::Result<(u64, Vec<f32>), E>>,
) -> std::result::Result<CatchUp, E>
where
    E: From<IndexError>,
{
    const BATCH: usize = 1024;
    let mut report = CatchUp::default();
    let mut seen = std::collections::HashSet::new();
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(BATCH);
    let flush = |batch: &mut Vec<(u64, Vec<f32>)>| -> Result<()> {
        let refs: Vec<(u64, &[f32])> = batch.iter().map(|(id, v)| (*id, &v[..])).collect();
        if !refs.is_empty() {
            index.insert_batch(&refs)?;
        }
        batch.clear();
        Ok(())
    };
    for entry in source {
        let (id, vector) = entry?;
        seen.insert(id);
        if index.holds(id, &vector) {
            report.kept += 1;
            continue;
        }
        report.inserted += 1;
        batch.push((id, vector));
        if batch.len() == BATCH {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    for id in index.ids() {
        if !seen.contains(&id) && index.delete(id) {
            report.deleted += 1;
        }
    }
    Ok(report)
}

/// Makes the checksums in the dump in `dir` match its (possibly damaged) files, so that a
/// fuzzer's damage reaches the parsers behind the checksum checks. Fuzzing support only (the
/// fuzz targets and the test suite's replay of their corpus).
#[doc(hidden)]
pub fn reseal_dump(dir: &Path) -> Result<()> {
    persist::reseal(dir)
}

/// Runs [`Index::rebuild`] on a background thread if [`Index::needs_rebuild`] says so.
/// Returns the thread's handle, or `None` when no rebuild is needed.
pub fn spawn_rebuild_if_needed(
    index: &Arc<dyn Index>,
) -> Option<std::thread::JoinHandle<Result<bool>>> {
    if !index.needs_rebuild() {
        return None;
    }
    let index = Arc::clone(index);
    let spawned = std::thread::Builder::new()
        .name("index-rebuild".into())
        .spawn(move || index.rebuild());
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the index rebuild thread");
            None
        }
    }
}

/// Checks every vector of a batch and returns them normalised, or the first error.
fn normalise_batch(dim: usize, items: &[(u64, &[f32])]) -> Result<Vec<(u64, Vec<f32>)>> {
    items
        .iter()
        .map(|&(id, v)| Ok((id, vector::normalised(dim, v)?)))
        .collect()
}

fn check_dim(dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(IndexError::InvalidConfig(
            "dimension must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Takes a lock even if a panicking thread poisoned it. The protected data stay memory-safe,
/// and the only foreign code run under a write lock is hnsw_rs's insert, which has no known
/// panic with this module's distance; if it ever panicked, one partly linked graph point is a
/// better outcome than failing every later call on the index.
fn read_lock<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(lock: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
