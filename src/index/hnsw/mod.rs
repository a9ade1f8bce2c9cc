//! Approximate indexes on HNSW graphs: locking, deletes, exact fallbacks and background
//! rebuilds, shared by two graph backends.
//!
//! - [`HnswIndex`] (kind `hnsw`, the default) runs the project's own graph ([`native`]): one
//!   contiguous copy of the vectors, flat link arrays, SIMD distances and parallel chunked
//!   construction. It is what the benchmarks in BENCHMARKS.md measure against hnswlib and
//!   faiss.
//! - [`HnswRsIndex`] (kind `hnsw_rs`) runs an hnsw_rs 0.3.5 graph ([`hnswrs`]), kept selectable
//!   for comparison; it spends about twice the memory and builds about three times slower.
//!
//! # What this layer adds to a graph
//!
//! - **Deletes and updates.** Neither graph removes points: re-inserting or deleting an id
//!   tombstones its point. Searches skip tombstones and apply the caller's filter inside the
//!   walk, so `k` accepted results come back when they exist. [`GraphIndex::needs_rebuild`]
//!   turns true once tombstones reach [`IndexConfig::rebuild_ratio`] (20%) of the points; the
//!   index never rebuilds on its own.
//! - **Exact answers where they are cheaper.** Searches with `exact: true`, and every search
//!   while fewer than [`IndexConfig::exact_threshold`] items are live, scan the vectors. A
//!   walk that finds fewer than `k` accepted items (because fewer exist, or they are not
//!   reachable) is confirmed by a scan. Graph candidates are re-scored with the exact dot
//!   product, so scores equal the flat index's bit for bit.
//! - **Concurrency.** A graph cannot be searched while it is written, so it sits behind one
//!   `RwLock`: searches share it, writes take it exclusively, a batch once per chunk of
//!   [`BATCH_CHUNK`] items, so searches interleave with long batch inserts. Within a chunk the
//!   backends insert on rayon's global pool while the exclusive lock is held, so the index
//!   must not be called from tasks of that pool: a worker the insert waits for could pick up
//!   such a task and block on the lock for ever.
//! - **Rebuild.** [`GraphIndex::rebuild`] copies the live vectors under a shared lock, builds a
//!   new graph with no lock held (searches and writes go on against the old one), then replays
//!   the ids written meanwhile and swaps the graphs under the exclusive lock. Large backlogs
//!   are replayed in rounds outside the lock first, so the exclusive section stays short.
//!   [`super::spawn_rebuild_if_needed`] runs it on a background thread.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use super::persist::{corrupt, io_error, Manifest};
use super::vector::{self, VectorStore};
use super::{
    check_dim, lock, normalise_batch, read_lock, write_lock, Hit, Index, IndexConfig, IndexKind,
    Result, SearchParams,
};

pub(crate) mod hnswrs;
pub(crate) mod native;

/// Inserts of a batch are applied in chunks of this size, each under one exclusive lock.
/// Searches wait for at most one chunk.
pub const BATCH_CHUNK: usize = 256;
/// A rebuild finishes under the exclusive lock once at most this many ids await replay.
const REPLAY_UNDER_LOCK: usize = 32;
/// Replay rounds outside the lock before a rebuild replays the rest under the lock anyway.
const MAX_REPLAY_ROUNDS: usize = 16;

/// The index with the project's own graph (kind `hnsw`).
pub(crate) type HnswIndex = GraphIndex<native::NativeGraph>;
/// The index with an hnsw_rs graph (kind `hnsw_rs`).
pub(crate) type HnswRsIndex = GraphIndex<hnswrs::HnswRsGraph>;

/// What the shared layer needs from a graph. Vectors come in normalised and validated.
pub(crate) trait Backend: Send + Sync + Sized {
    /// The index kind this backend serves.
    const KIND: IndexKind;

    /// An empty graph.
    fn create(dim: usize, config: &IndexConfig, capacity: usize) -> Self;
    /// Live items.
    fn live_len(&self) -> usize;
    /// Points in the graph, tombstoned ones included.
    fn points(&self) -> usize;
    /// Tombstoned points.
    fn tombstone_count(&self) -> usize;
    /// The stored vector of a live id.
    fn vector_of(&self, id: u64) -> Option<&[f32]>;
    /// Live ids, in no particular order.
    fn live_ids(&self) -> Vec<u64>;
    /// A copy of the live vectors (the input of a rebuild).
    fn live_copy(&self) -> VectorStore;
    /// Inserts items, a later duplicate id superseding an earlier one.
    fn insert_items(&mut self, items: &[(u64, &[f32])]);
    /// Tombstones `id`; whether it was live.
    fn remove_id(&mut self, id: u64) -> bool;
    /// Exact top-`k` of the live items accepted by `filter`.
    fn scan_items(&self, query: &[f32], k: usize, filter: Option<&dyn Fn(u64) -> bool>)
        -> Vec<Hit>;
    /// Up to `ef` (at least `k` when they exist) live items accepted by `filter` from a graph
    /// walk, exactly scored and ranked.
    fn walk(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit>;
    /// Writes the graph's files into `dir` and returns the manifest naming them (unpublished).
    fn save_files(&self, dir: &Path, stamp: u64, config: &IndexConfig) -> Result<Manifest>;
    /// Reads the graph of a manifest of this kind; `config` carries the dump's parameters.
    fn load_files(dir: &Path, manifest: &Manifest, config: &IndexConfig) -> Result<Self>;
    /// Asserts the backend's consistency (test support).
    #[cfg(test)]
    fn check_backend(&self);
}

/// An approximate index on a graph backend. See the module documentation.
pub(crate) struct GraphIndex<B> {
    dim: usize,
    config: IndexConfig,
    state: RwLock<B>,
    /// Ids written since a running rebuild copied the vectors; `None` when no rebuild runs.
    /// Lock order: `state`, then `rebuild_log`.
    rebuild_log: Mutex<Option<HashSet<u64>>>,
    rebuilding: AtomicBool,
    /// Serialises saves of this index.
    saving: Mutex<()>,
}

impl<B: Backend> std::fmt::Debug for GraphIndex<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = read_lock(&self.state);
        f.debug_struct("GraphIndex")
            .field("kind", &B::KIND)
            .field("dim", &self.dim)
            .field("config", &self.config)
            .field("len", &state.live_len())
            .field("graph_points", &state.points())
            .field("tombstones", &state.tombstone_count())
            .finish()
    }
}

impl<B: Backend> GraphIndex<B> {
    /// An empty index for vectors of dimension `dim`.
    pub(crate) fn new(dim: usize, config: &IndexConfig) -> Result<Self> {
        check_dim(dim)?;
        config.validate()?;
        let capacity = config.max_elements.min(1 << 20);
        Ok(Self::from_state(
            dim,
            config.clone(),
            B::create(dim, config, capacity),
        ))
    }

    fn from_state(dim: usize, config: IndexConfig, state: B) -> Self {
        Self {
            dim,
            config,
            state: RwLock::new(state),
            rebuild_log: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            saving: Mutex::new(()),
        }
    }

    /// Points in the graph, tombstoned ones included.
    #[cfg(test)]
    pub(crate) fn graph_points(&self) -> usize {
        read_lock(&self.state).points()
    }

    /// Tombstoned points in the graph.
    #[cfg(test)]
    pub(crate) fn tombstones(&self) -> usize {
        read_lock(&self.state).tombstone_count()
    }

    /// Whether a rebuild is running.
    pub(crate) fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    /// Records a write for a running rebuild. Called with the state lock held exclusively.
    fn note_written(&self, ids: impl IntoIterator<Item = u64>) {
        if let Some(log) = lock(&self.rebuild_log).as_mut() {
            log.extend(ids);
        }
    }

    /// Searches the graph only: no exact scan, neither for small indexes nor as a fallback.
    #[cfg(test)]
    pub(crate) fn search_graph_only(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        let query = vector::normalised(self.dim, query)?;
        let mut hits = read_lock(&self.state).walk(&query, k, ef.max(k), filter);
        hits.truncate(k);
        Ok(hits)
    }

    /// Loads a dump of this kind from `dir`. See [`super::load`] for which parameters come
    /// from where.
    #[cfg(test)]
    pub(crate) fn load(dir: &Path, config: &IndexConfig) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        Self::load_manifest(dir, &manifest, config)
    }

    pub(crate) fn load_manifest(
        dir: &Path,
        manifest: &Manifest,
        config: &IndexConfig,
    ) -> Result<Self> {
        if manifest.kind != B::KIND {
            return Err(corrupt(
                dir,
                format!(
                    "the dump holds a {} index, not a {} one",
                    manifest.kind,
                    B::KIND
                ),
            ));
        }
        config.validate()?;
        let (m, ef_construction) = manifest
            .graph_params()
            .ok_or_else(|| corrupt(dir, "the manifest has no graph section"))?;
        if m != config.m || ef_construction != config.ef_construction {
            tracing::info!(
                m,
                ef_construction,
                "using the graph parameters of the dump, not those of the configuration"
            );
        }
        let config = IndexConfig {
            m,
            ef_construction,
            ..config.clone()
        };
        config
            .validate()
            .map_err(|e| corrupt(dir, format!("dump parameters: {e}")))?;
        let state = B::load_files(dir, manifest, &config)?;
        if state.live_len() != manifest.live {
            return Err(corrupt(
                dir,
                format!(
                    "the graph holds {} live items, the manifest says {}",
                    state.live_len(),
                    manifest.live
                ),
            ));
        }
        Ok(Self::from_state(manifest.dim, config, state))
    }

    /// Rebuilds the graph from the live vectors, dropping every tombstone. Searches, inserts
    /// and deletes continue from other threads meanwhile (see the module documentation).
    /// Returns false, doing nothing, if another rebuild is running.
    pub(crate) fn rebuild(&self) -> Result<bool> {
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(false);
        }
        let _running = RebuildGuard(&self.rebuild_log, &self.rebuilding);

        let snapshot = {
            let state = read_lock(&self.state);
            *lock(&self.rebuild_log) = Some(HashSet::new());
            state.live_copy()
        };
        let started = std::time::Instant::now();
        let capacity = snapshot.len().max(self.config.max_elements.min(1 << 20));
        let mut graph = B::create(self.dim, &self.config, capacity);
        insert_chunked(&mut graph, &snapshot.iter().collect::<Vec<_>>());
        drop(snapshot);

        let mut round = 0;
        loop {
            let mut state = write_lock(&self.state);
            let written = lock(&self.rebuild_log)
                .replace(HashSet::new())
                .unwrap_or_default();
            if written.len() <= REPLAY_UNDER_LOCK || round >= MAX_REPLAY_ROUNDS {
                replay(&mut graph, &*state, written);
                let old = std::mem::replace(&mut *state, graph);
                *lock(&self.rebuild_log) = None;
                drop(state);
                tracing::info!(
                    kind = %B::KIND,
                    points = old.points(),
                    tombstones = old.tombstone_count(),
                    seconds = started.elapsed().as_secs_f64(),
                    "HNSW graph rebuilt"
                );
                drop(old);
                return Ok(true);
            }
            let copies = {
                let mut copies = VectorStore::new(self.dim);
                for &id in &written {
                    if let Some(v) = state.vector_of(id) {
                        copies.upsert(id, v);
                    }
                }
                copies
            };
            drop(state);
            replay(&mut graph, &copies, written);
            round += 1;
        }
    }

    /// Asserts the consistency of the graph and its bookkeeping (test support).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let state = read_lock(&self.state);
        state.check_backend();
        assert_eq!(state.points() - state.tombstone_count(), state.live_len());
    }
}

/// Inserts `items` into `graph` [`BATCH_CHUNK`] at a time.
fn insert_chunked<B: Backend>(graph: &mut B, items: &[(u64, &[f32])]) {
    for chunk in items.chunks(BATCH_CHUNK) {
        graph.insert_items(chunk);
    }
}

/// Where a replay reads the current vectors of the ids written during a rebuild.
trait VectorSource {
    fn current(&self, id: u64) -> Option<&[f32]>;
}

impl VectorSource for VectorStore {
    fn current(&self, id: u64) -> Option<&[f32]> {
        self.get(id)
    }
}

impl<B: Backend> VectorSource for B {
    fn current(&self, id: u64) -> Option<&[f32]> {
        self.vector_of(id)
    }
}

/// Brings `graph` up to date for the `written` ids: their current vectors are in `source`,
/// and an id absent from `source` was deleted.
fn replay<B: Backend>(graph: &mut B, source: &dyn VectorSource, written: HashSet<u64>) {
    let mut live = Vec::with_capacity(written.len());
    for id in written {
        graph.remove_id(id);
        if let Some(v) = source.current(id) {
            live.push((id, v));
        }
    }
    insert_chunked(graph, &live);
}

/// Resets the rebuild flag and log however a rebuild ends.
struct RebuildGuard<'a>(&'a Mutex<Option<HashSet<u64>>>, &'a AtomicBool);

impl Drop for RebuildGuard<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
        self.1.store(false, Ordering::Release);
    }
}

impl<B: Backend> Index for GraphIndex<B> {
    fn kind(&self) -> IndexKind {
        B::KIND
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        read_lock(&self.state).live_len()
    }

    fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        self.insert_batch(&[(id, vector)])
    }

    fn insert_batch(&self, items: &[(u64, &[f32])]) -> Result<()> {
        let items = normalise_batch(self.dim, items)?;
        for chunk in items.chunks(BATCH_CHUNK) {
            let refs: Vec<(u64, &[f32])> = chunk.iter().map(|(id, v)| (*id, &v[..])).collect();
            let mut state = write_lock(&self.state);
            state.insert_items(&refs);
            self.note_written(refs.iter().map(|&(id, _)| id));
        }
        Ok(())
    }

    fn delete(&self, id: u64) -> bool {
        let mut state = write_lock(&self.state);
        let removed = state.remove_id(id);
        self.note_written([id]);
        removed
    }

    fn contains(&self, id: u64) -> bool {
        read_lock(&self.state).vector_of(id).is_some()
    }

    fn ids(&self) -> Vec<u64> {
        read_lock(&self.state).live_ids()
    }

    fn holds(&self, id: u64, vector: &[f32]) -> bool {
        vector::holds(read_lock(&self.state).vector_of(id), self.dim, vector)
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        let query = vector::normalised(self.dim, query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let state = read_lock(&self.state);
        let live = state.live_len();
        if params.exact || live < self.config.exact_threshold {
            return Ok(state.scan_items(&query, k, filter));
        }
        // Candidate heaps are allocated with capacity `ef`: bound it by the graph.
        let k = k.min(live);
        let ef = params
            .ef_search
            .unwrap_or(self.config.ef_search)
            .min(state.points())
            .max(k);
        let mut hits = state.walk(&query, k, ef, filter);
        hits.truncate(k);
        if hits.len() < k && hits.len() < live {
            // The walk found fewer than k accepted points: either fewer exist (a scan confirms
            // it) or the accepted ones are unreachable from the graph's entry point.
            return Ok(state.scan_items(&query, k, filter));
        }
        Ok(hits)
    }

    fn save(&self, dir: &Path, stamp: u64) -> Result<()> {
        let _saving = lock(&self.saving);
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let manifest = read_lock(&self.state).save_files(dir, stamp, &self.config)?;
        manifest.publish(dir)
    }

    fn needs_rebuild(&self) -> bool {
        if self.is_rebuilding() {
            return false;
        }
        let state = read_lock(&self.state);
        let tombstones = state.tombstone_count();
        tombstones > 0 && tombstones as f64 >= self.config.rebuild_ratio * state.points() as f64
    }

    fn rebuild(&self) -> Result<bool> {
        GraphIndex::rebuild(self)
    }
}
