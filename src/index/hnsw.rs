//! Approximate index on an hnsw_rs 0.3.5 graph.
//!
//! # What this wrapper adds to hnsw_rs
//!
//! - **Distance.** [`CosineDistance`] is `1 - dot` clamped to `[0, 2]` with NaN mapped to 2, on
//!   the vectorised dot product of the `vector` module. hnsw_rs panics on NaN distances and its
//!   `DistDot` asserts `dot <= 1`, which normalised vectors can exceed by a rounding error; this
//!   distance cannot panic.
//! - **Deletes and updates.** hnsw_rs cannot remove a point. Every insert gives the point a fresh
//!   internal data id (its position in `ext_ids`, the internal -> external map); re-inserting an
//!   id or deleting it marks its previous internal id as a tombstone. A caller's filter is passed
//!   to hnsw_rs's `search_filter` together with the tombstone check, so it is applied *inside*
//!   the graph walk and `k` accepted results come back when they exist. Without a caller's
//!   filter, tombstones are dropped from the candidates of an ordinary walk whose width is
//!   raised from `ef` to `ef * points / live`, and the filtered walk runs only if fewer than
//!   `k` live candidates remain: hnsw_rs's filtered walk has no early stop, and even with a
//!   filter accepting everything it took 2.6 times as long as the plain walk (10k 64-d
//!   vectors, unoptimised build). Tombstones still cost walk time and memory:
//!   [`HnswIndex::needs_rebuild`] turns true once they reach [`IndexConfig::rebuild_ratio`]
//!   (20%) of the graph's points; the index never rebuilds on its own.
//! - **Kept vectors.** The wrapper keeps the live vectors in a dense `VectorStore`. It serves
//!   exact searches (`exact: true`, and every search while the index holds fewer than
//!   [`IndexConfig::exact_threshold`] items, where a scan is both exact and faster), re-scores
//!   graph candidates with the exact dot product (so scores equal the flat index's bit for bit),
//!   and is the source of rebuilds. It costs one more copy of the vectors in memory.
//! - **Concurrency.** hnsw_rs cannot insert and search the same graph concurrently, so the graph
//!   and the kept vectors sit behind one `RwLock`: searches share it, inserts and deletes take it
//!   exclusively (a batch takes it once per chunk of [`BATCH_CHUNK`] items, and within a chunk
//!   inserts use hnsw_rs's parallel insert), so searches interleave with long batch inserts.
//!   The parallel insert runs on rayon's global pool while the exclusive lock is held, so the
//!   index must not be called from tasks of that pool: a worker the insert waits for could
//!   pick up such a task and block on the lock for ever.
//! - **Rebuild.** [`HnswIndex::rebuild`] copies the live vectors under a shared lock, builds a
//!   new graph with no lock held (searches and writes go on against the old graph), then replays
//!   the ids written meanwhile and swaps the graphs under the exclusive lock. Large backlogs are
//!   replayed in rounds outside the lock first, so the exclusive section stays short. The old
//!   graph is dropped after the lock is released. No `Arc` of the graph is needed: a rebuild
//!   never reads the old graph, only the vectors. [`super::spawn_rebuild_if_needed`] runs it on
//!   a background thread.
//!
//! # Persistence
//!
//! A dump is hnsw_rs's own `file_dump` (files `graph-<tag>.hnsw.graph` and `.hnsw.data`) plus
//! `graph-<tag>.ids` (little-endian: magic `OBGIDS01`, `count: u64`, `count` external ids as
//! `u64`, then `count` tombstone flags as bytes) and the manifest of the `persist` module, which
//! records every file's length and XXH64. hnsw_rs writes native-endian files without checksums
//! and its loader asserts, indexes out of bounds, or even exits the process on malformed input,
//! so [`HnswIndex::load`] verifies both checksums *before* calling the loader, checks that the
//! loader opens exactly the verified files, runs it under `catch_unwind` as a last resort, and
//! then cross-checks the graph against the id map. The kept vectors are read back from the
//! graph's points, so vectors are not stored twice on disk.
//!
//! Loading hnsw_rs's dump was preferred to rebuilding the graph by re-inserting the vectors:
//! re-insertion costs the full build time (about 0.5k 512-d vectors per second on two cores at
//! m = 16, ef_construction = 200, so minutes for 100k items), while a load only reads and links
//! the stored points. In the unoptimised test build, 10k 64-d vectors at m = 12,
//! ef_construction = 32 took 3.8 s to insert and 0.16 s to load (checksums included); the gap
//! grows with ef_construction.
//!
//! **Borrow.** hnsw_rs ties a loaded `Hnsw<'b, ..>` to the `HnswIo` that loaded it, because point
//! data may be memory-mapped from it. Mapping is never enabled here, so the loaded graph owns all
//! its data and never reads the loader again. The loader is leaked (`Box::leak`, a path and a
//! few words per load) to obtain a `&'static HnswIo` and so an `Hnsw<'static, ..>` that can be
//! stored, moved between threads and swapped by a rebuild, without `unsafe` and without a
//! self-referential struct. Loads happen once per index and process start, so the leak is
//! bounded by the number of loads.
//!
//! hnsw_rs records the distance's type name (`omnibind::index::hnsw::CosineDistance`) in the
//! dump and refuses dumps of another name, so moving that type invalidates old dumps (an error,
//! the caller rebuilds). `catch_unwind` cannot help if the crate is built with `panic = "abort"`.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use hnsw_rs::prelude::{AnnT, Distance, FilterT, Hnsw, HnswIo, Neighbour};

use super::persist::{
    self, corrupt, io_error, read_u64s, write_u64s, FileEntry, GraphDump, GraphSection,
    HashingReader, Manifest, ReadError,
};
use super::vector::{self, rank_order, VectorStore};
use super::{
    check_dim, lock, normalise_batch, read_lock, write_lock, Hit, Index, IndexConfig, IndexKind,
    Result, SearchParams,
};

/// Inserts of a batch are applied in chunks of this size, each under one exclusive lock.
/// Searches wait for at most one chunk: about a quarter of a second for 512-d vectors at the
/// default parameters (0.54k inserts per second on two cores).
pub const BATCH_CHUNK: usize = 128;
/// Below this many vectors a chunk is inserted sequentially (thread start-up would dominate).
const PARALLEL_MIN: usize = 64;
/// hnsw_rs's maximum number of layers.
const MAX_LAYERS: usize = 16;
/// A rebuild finishes under the exclusive lock once at most this many ids await replay.
const REPLAY_UNDER_LOCK: usize = 32;
/// Replay rounds outside the lock before a rebuild replays the rest under the lock anyway.
const MAX_REPLAY_ROUNDS: usize = 16;

const IDS_MAGIC: &[u8; 8] = b"OBGIDS01";
const IDS_HEADER_LEN: u64 = 16;

/// Cosine distance of unit vectors for hnsw_rs: `1 - dot`, clamped to `[0, 2]`, NaN mapped to
/// 2. Never panics, unlike hnsw_rs's `DistDot`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CosineDistance;

impl Distance<f32> for CosineDistance {
    #[inline]
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let distance = 1.0 - vector::dot(a, b);
        if distance.is_nan() {
            2.0
        } else {
            distance.clamp(0.0, 2.0)
        }
    }
}

type Hnswg = Hnsw<'static, f32, CosineDistance>;

/// An hnsw_rs graph with its id map and tombstones.
struct Graph {
    hnsw: Hnswg,
    /// Internal data id -> external id, for every point ever inserted in this graph.
    ext_ids: Vec<u64>,
    /// Tombstone flag per internal data id.
    dead: Vec<bool>,
    /// External id -> its live internal data id.
    internal: HashMap<u64, usize>,
    tombstones: usize,
}

impl Graph {
    fn new(config: &IndexConfig, capacity: usize) -> Self {
        let hnsw = Hnsw::new(
            config.m,
            capacity.max(1),
            MAX_LAYERS,
            config.ef_construction,
            CosineDistance,
        );
        Self {
            hnsw,
            ext_ids: Vec::with_capacity(capacity),
            dead: Vec::with_capacity(capacity),
            internal: HashMap::with_capacity(capacity),
            tombstones: 0,
        }
    }

    /// Points in the graph, tombstoned ones included.
    fn points(&self) -> usize {
        self.ext_ids.len()
    }

    /// Registers a new point for `id`, tombstoning its previous one; returns its internal id.
    fn register(&mut self, id: u64) -> usize {
        let internal = self.ext_ids.len();
        self.ext_ids.push(id);
        self.dead.push(false);
        if let Some(old) = self.internal.insert(id, internal) {
            self.dead[old] = true;
            self.tombstones += 1;
        }
        internal
    }

    fn remove(&mut self, id: u64) -> bool {
        match self.internal.remove(&id) {
            Some(old) => {
                self.dead[old] = true;
                self.tombstones += 1;
                true
            }
            None => false,
        }
    }

    /// Inserts normalised vectors; a later duplicate id supersedes an earlier one.
    fn insert_many(&mut self, items: &[(u64, &[f32])]) {
        let data: Vec<(&[f32], usize)> = items
            .iter()
            .map(|&(id, v)| (v, self.register(id)))
            .collect();
        if data.len() >= PARALLEL_MIN {
            self.hnsw.parallel_insert_slice(&data);
        } else {
            for item in data {
                self.hnsw.insert_slice(item);
            }
        }
    }

    fn accepts(&self, internal: usize, filter: Option<&dyn Fn(u64) -> bool>) -> bool {
        match self.ext_ids.get(internal) {
            Some(&id) => !self.dead[internal] && filter.is_none_or(|keep| keep(id)),
            None => false,
        }
    }

    /// Walks the graph for up to `ef` accepted candidates, at least `k` of them when possible.
    ///
    /// A caller's filter is always applied inside the walk. Tombstones alone are handled more
    /// cheaply, because hnsw_rs's filtered walk never stops early (it expands every candidate
    /// it queued, see the module documentation): an ordinary walk widened by the share of
    /// tombstones, so that about `ef` of its candidates are live, whose dead candidates the
    /// caller drops; the filtered walk runs only when fewer than `k` live candidates remain.
    fn candidates(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Neighbour> {
        if filter.is_none() {
            if self.tombstones == 0 {
                return self.hnsw.search_filter(query, ef, ef, None);
            }
            let points = self.points();
            let live = (points - self.tombstones).max(1);
            let widened = ef
                .saturating_mul(points)
                .div_ceil(live)
                .clamp(ef, points.max(ef));
            let found = self.hnsw.search_filter(query, widened, widened, None);
            if found.iter().filter(|n| self.accepts(n.d_id, None)).count() >= k {
                return found;
            }
        }
        let accept = |internal: &usize| self.accepts(*internal, filter);
        self.hnsw
            .search_filter(query, ef, ef, Some(&accept as &dyn FilterT))
    }
}

/// The graph and the live vectors, always updated together.
struct State {
    vectors: VectorStore,
    graph: Graph,
}

impl State {
    /// Top-`k` from the graph alone, re-scored with the exact dot product.
    fn graph_search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        let graph = &self.graph;
        let mut hits: Vec<Hit> = graph
            .candidates(query, k, ef, filter)
            .iter()
            // hnsw_rs may return its entry point even when the filter rejects it.
            .filter(|n| graph.accepts(n.d_id, filter))
            .filter_map(|n| {
                let id = graph.ext_ids[n.d_id];
                self.vectors.get(id).map(|v| Hit {
                    id,
                    score: vector::dot(query, v),
                })
            })
            .collect();
        hits.sort_by(rank_order);
        hits.truncate(k);
        hits
    }
}

/// Approximate nearest-neighbour index on an HNSW graph. See the module documentation.
pub struct HnswIndex {
    dim: usize,
    config: IndexConfig,
    state: RwLock<State>,
    /// Ids written since a running rebuild copied the vectors; `None` when no rebuild runs.
    /// Lock order: `state`, then `rebuild_log`.
    rebuild_log: Mutex<Option<HashSet<u64>>>,
    rebuilding: AtomicBool,
    /// Serialises saves of this index.
    saving: Mutex<()>,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = read_lock(&self.state);
        f.debug_struct("HnswIndex")
            .field("dim", &self.dim)
            .field("config", &self.config)
            .field("len", &state.vectors.len())
            .field("graph_points", &state.graph.points())
            .field("tombstones", &state.graph.tombstones)
            .finish()
    }
}

impl HnswIndex {
    /// An empty index for vectors of dimension `dim`.
    pub fn new(dim: usize, config: &IndexConfig) -> Result<Self> {
        check_dim(dim)?;
        config.validate()?;
        let capacity = config.max_elements.min(1 << 20);
        Ok(Self::from_state(
            dim,
            config.clone(),
            State {
                vectors: VectorStore::with_capacity(dim, capacity),
                graph: Graph::new(config, capacity),
            },
        ))
    }

    fn from_state(dim: usize, config: IndexConfig, state: State) -> Self {
        Self {
            dim,
            config,
            state: RwLock::new(state),
            rebuild_log: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            saving: Mutex::new(()),
        }
    }

    /// The configuration in use (for a loaded index, `m` and `ef_construction` of the dump).
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Points in the graph, tombstoned ones included.
    pub fn graph_points(&self) -> usize {
        read_lock(&self.state).graph.points()
    }

    /// Tombstoned points in the graph.
    pub fn tombstones(&self) -> usize {
        read_lock(&self.state).graph.tombstones
    }

    /// Whether a rebuild is running.
    pub fn is_rebuilding(&self) -> bool {
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
        Ok(read_lock(&self.state).graph_search(&query, k, ef.max(k), filter))
    }

    /// Loads an HNSW dump from `dir`. See [`super::load`] for which parameters come from where.
    pub fn load(dir: &Path, config: &IndexConfig) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        Self::load_manifest(dir, &manifest, config)
    }

    pub(crate) fn load_manifest(
        dir: &Path,
        manifest: &Manifest,
        config: &IndexConfig,
    ) -> Result<Self> {
        let section = match (&manifest.kind, &manifest.graph) {
            (IndexKind::Hnsw, Some(section)) => section,
            _ => {
                return Err(corrupt(
                    dir,
                    format!("the dump holds a {} index, not an HNSW one", manifest.kind),
                ))
            }
        };
        config.validate()?;
        if section.m != config.m || section.ef_construction != config.ef_construction {
            tracing::info!(
                m = section.m,
                ef_construction = section.ef_construction,
                "using the graph parameters of the dump, not those of the configuration"
            );
        }
        let dim = manifest.dim;
        let config = IndexConfig {
            m: section.m,
            ef_construction: section.ef_construction,
            ..config.clone()
        };
        config
            .validate()
            .map_err(|e| corrupt(dir, format!("dump parameters: {e}")))?;

        let (ext_ids, dead) = read_ids(dir, &section.ids, section.points)?;
        let tombstones = dead.iter().filter(|&&d| d).count();
        if tombstones != section.tombstones || section.points - tombstones != manifest.live {
            return Err(corrupt(
                dir,
                "tombstone and live counts disagree with the manifest",
            ));
        }

        let hnsw = match &section.dump {
            None if section.points == 0 => Graph::new(&config, 0).hnsw,
            None => return Err(corrupt(dir, "the graph dump is missing")),
            Some(dump) => load_graph_dump(dir, dump, dim)?,
        };
        if hnsw.get_nb_point() != section.points {
            return Err(corrupt(
                dir,
                format!(
                    "the graph has {} points, the id map {}",
                    hnsw.get_nb_point(),
                    section.points
                ),
            ));
        }

        // Rebuild the kept vectors and the live-id map from the graph's own points.
        let mut vectors = VectorStore::with_capacity(dim, manifest.live);
        let mut internal = HashMap::with_capacity(manifest.live);
        let mut seen = vec![false; section.points];
        let indexation = hnsw.get_point_indexation();
        for layer in 0..MAX_LAYERS {
            // get_layer_nb_point answers 0 for a layer that does not exist, where the iterator
            // would index out of bounds.
            if indexation.get_layer_nb_point(layer) == 0 {
                continue;
            }
            for point in indexation.get_layer_iterator(layer) {
                let data_id = point.get_origin_id();
                if data_id >= section.points || seen[data_id] {
                    return Err(corrupt(dir, format!("graph point {data_id} is unexpected")));
                }
                seen[data_id] = true;
                if dead[data_id] {
                    continue;
                }
                let v = point.get_v();
                if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
                    return Err(corrupt(dir, format!("graph point {data_id} is malformed")));
                }
                let id = ext_ids[data_id];
                if internal.insert(id, data_id).is_some() {
                    return Err(corrupt(dir, format!("id {id} has two live graph points")));
                }
                vectors.upsert(id, v);
            }
        }
        if seen.iter().any(|&s| !s) {
            return Err(corrupt(dir, "the graph misses points of the id map"));
        }
        let mut hnsw = hnsw;
        // hnsw_rs's loader turns on candidate extension, which new graphs do not use.
        hnsw.set_extend_candidates(false);
        let graph = Graph {
            hnsw,
            ext_ids,
            dead,
            internal,
            tombstones,
        };
        Ok(Self::from_state(dim, config, State { vectors, graph }))
    }

    /// Rebuilds the graph from the live vectors, dropping every tombstone. Searches, inserts
    /// and deletes continue from other threads meanwhile (see the module documentation).
    /// Returns false, doing nothing, if another rebuild is running.
    pub fn rebuild(&self) -> Result<bool> {
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(false);
        }
        let _running = RebuildGuard(self);

        let snapshot = {
            let state = read_lock(&self.state);
            *lock(&self.rebuild_log) = Some(HashSet::new());
            state.vectors.clone()
        };
        let started = std::time::Instant::now();
        let mut graph = Graph::new(
            &self.config,
            snapshot.len().max(self.config.max_elements.min(1 << 20)),
        );
        graph.insert_many(&snapshot.iter().collect::<Vec<(u64, &[f32])>>());
        drop(snapshot);

        let mut round = 0;
        loop {
            let mut state = write_lock(&self.state);
            let written = lock(&self.rebuild_log)
                .replace(HashSet::new())
                .unwrap_or_default();
            if written.len() <= REPLAY_UNDER_LOCK || round >= MAX_REPLAY_ROUNDS {
                replay(&mut graph, &state.vectors, written);
                let old = std::mem::replace(&mut state.graph, graph);
                *lock(&self.rebuild_log) = None;
                drop(state);
                tracing::info!(
                    points = old.points(),
                    tombstones = old.tombstones,
                    seconds = started.elapsed().as_secs_f64(),
                    "HNSW graph rebuilt"
                );
                drop(old);
                return Ok(true);
            }
            let copies: VectorStore = {
                let mut copies = VectorStore::new(self.dim);
                for &id in &written {
                    if let Some(v) = state.vectors.get(id) {
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
}

/// Resets the rebuild flag and log however a rebuild ends.
struct RebuildGuard<'a>(&'a HnswIndex);

impl Drop for RebuildGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.rebuild_log) = None;
        self.0.rebuilding.store(false, Ordering::Release);
    }
}

/// Brings `graph` up to date for the `written` ids: their current vectors are in `vectors`,
/// and an id absent from `vectors` was deleted.
fn replay(graph: &mut Graph, vectors: &VectorStore, written: HashSet<u64>) {
    let mut live = Vec::with_capacity(written.len());
    for id in written {
        graph.remove(id);
        if let Some(v) = vectors.get(id) {
            live.push((id, v));
        }
    }
    graph.insert_many(&live);
}

impl Index for HnswIndex {
    fn kind(&self) -> IndexKind {
        IndexKind::Hnsw
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        read_lock(&self.state).vectors.len()
    }

    fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        let v = vector::normalised(self.dim, vector)?;
        let mut state = write_lock(&self.state);
        state.vectors.upsert(id, &v);
        state.graph.insert_many(&[(id, &v)]);
        self.note_written([id]);
        Ok(())
    }

    fn insert_batch(&self, items: &[(u64, &[f32])]) -> Result<()> {
        let items = normalise_batch(self.dim, items)?;
        for chunk in items.chunks(BATCH_CHUNK) {
            let refs: Vec<(u64, &[f32])> = chunk.iter().map(|(id, v)| (*id, &v[..])).collect();
            let mut state = write_lock(&self.state);
            for &(id, v) in &refs {
                state.vectors.upsert(id, v);
            }
            state.graph.insert_many(&refs);
            self.note_written(refs.iter().map(|&(id, _)| id));
        }
        Ok(())
    }

    fn delete(&self, id: u64) -> bool {
        let mut state = write_lock(&self.state);
        let removed = state.vectors.remove(id);
        state.graph.remove(id);
        self.note_written([id]);
        removed
    }

    fn contains(&self, id: u64) -> bool {
        read_lock(&self.state).vectors.contains(id)
    }

    fn ids(&self) -> Vec<u64> {
        read_lock(&self.state).vectors.ids().to_vec()
    }

    fn holds(&self, id: u64, vector: &[f32]) -> bool {
        read_lock(&self.state).vectors.holds(id, vector)
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
        let live = state.vectors.len();
        if params.exact || live < self.config.exact_threshold {
            return Ok(state.vectors.search(&query, k, filter));
        }
        // hnsw_rs allocates its candidate heaps with capacity `ef`: bound both by the graph.
        let k = k.min(live);
        let ef = params
            .ef_search
            .unwrap_or(self.config.ef_search)
            .min(state.graph.points())
            .max(k);
        let hits = state.graph_search(&query, k, ef, filter);
        if hits.len() < k && hits.len() < live {
            // The walk found fewer than k accepted points: either fewer exist (a scan confirms
            // it) or the accepted ones are unreachable from the graph's entry point.
            return Ok(state.vectors.search(&query, k, filter));
        }
        Ok(hits)
    }

    fn save(&self, dir: &Path, stamp: u64) -> Result<()> {
        let _saving = lock(&self.saving);
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let state = read_lock(&self.state);
        let graph = &state.graph;
        let base = loop {
            let base = format!("graph-{}", persist::unique_tag(stamp));
            let taken = [".hnsw.graph", ".hnsw.data", ".ids"]
                .iter()
                .any(|ext| dir.join(format!("{base}{ext}")).exists());
            if !taken {
                break base;
            }
        };
        let ids = persist::write_new_file(dir, &format!("{base}.ids"), |w| {
            write_ids(w, &graph.ext_ids, &graph.dead)
        })?;
        let dump = if graph.hnsw.get_nb_point() == 0 {
            None
        } else {
            Some(dump_graph(dir, &base, &graph.hnsw)?)
        };
        let mut manifest = Manifest::new(IndexKind::Hnsw, self.dim, stamp, state.vectors.len());
        manifest.graph = Some(GraphSection {
            m: self.config.m,
            ef_construction: self.config.ef_construction,
            points: graph.points(),
            tombstones: graph.tombstones,
            ids,
            dump,
        });
        drop(state);
        manifest.publish(dir)
    }

    fn needs_rebuild(&self) -> bool {
        if self.is_rebuilding() {
            return false;
        }
        let state = read_lock(&self.state);
        let graph = &state.graph;
        graph.tombstones > 0
            && graph.tombstones as f64 >= self.config.rebuild_ratio * graph.points() as f64
    }

    fn rebuild(&self) -> Result<bool> {
        HnswIndex::rebuild(self)
    }
}

fn write_ids(w: &mut dyn Write, ext_ids: &[u64], dead: &[bool]) -> io::Result<()> {
    w.write_all(IDS_MAGIC)?;
    w.write_all(&(ext_ids.len() as u64).to_le_bytes())?;
    write_u64s(w, ext_ids)?;
    let flags: Vec<u8> = dead.iter().map(|&d| u8::from(d)).collect();
    w.write_all(&flags)
}

/// Reads and verifies the id map; sizes are checked against the file length first.
fn read_ids(dir: &Path, entry: &FileEntry, points: usize) -> Result<(Vec<u64>, Vec<bool>)> {
    let path = entry.path_in(dir)?;
    let file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(&path, e))?.len();
    entry.check_len(dir, file_len)?;
    let expected = (points as u64)
        .checked_mul(9)
        .and_then(|body| body.checked_add(IDS_HEADER_LEN));
    if expected != Some(file_len) {
        return Err(corrupt(
            &path,
            format!("{file_len} bytes cannot hold {points} ids"),
        ));
    }
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let parsed = (|| -> Result<(Vec<u64>, Vec<u8>), ReadError> {
        let mut header = [0u8; IDS_HEADER_LEN as usize];
        reader.read_exact(&mut header)?;
        if &header[..8] != IDS_MAGIC {
            return Err(ReadError::Invalid("not an id map (bad magic)".into()));
        }
        let count = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if count != points as u64 {
            return Err(ReadError::Invalid(format!(
                "id map holds {count} ids, the manifest says {points}"
            )));
        }
        let ids = read_u64s(&mut reader, points)?;
        let mut flags = vec![0u8; points];
        reader.read_exact(&mut flags)?;
        Ok((ids, flags))
    })();
    let (ids, flags) = parsed.map_err(|e| e.into_index_error(&path))?;
    entry.check(dir, reader.len(), reader.hash())?;
    if flags.iter().any(|&f| f > 1) {
        return Err(corrupt(&path, "invalid tombstone flag"));
    }
    Ok((ids, flags.into_iter().map(|f| f == 1).collect()))
}

/// Runs hnsw_rs's `file_dump` for `base` in `dir`, then fsyncs and checksums its two files.
fn dump_graph(dir: &Path, base: &str, hnsw: &Hnswg) -> Result<GraphDump> {
    let dumped =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hnsw.file_dump(dir, base)));
    let basename = match dumped {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => {
            return Err(io_error(
                dir,
                io::Error::other(format!("hnsw_rs cannot dump the graph: {e}")),
            ))
        }
        Err(panic) => {
            return Err(io_error(
                dir,
                io::Error::other(format!(
                    "hnsw_rs panicked while dumping the graph: {}",
                    panic_message(panic.as_ref())
                )),
            ))
        }
    };
    let graph = persist::seal_foreign_file(dir, &format!("{basename}.hnsw.graph"))?;
    let data = persist::seal_foreign_file(dir, &format!("{basename}.hnsw.data"))?;
    Ok(GraphDump {
        basename,
        graph,
        data,
    })
}

/// Verifies and loads hnsw_rs's dump. Never panics.
fn load_graph_dump(dir: &Path, dump: &GraphDump, dim: usize) -> Result<Hnswg> {
    // hnsw_rs derives the file names from the basename: make sure those are the files whose
    // checksums are verified.
    if dump.graph.name != format!("{}.hnsw.graph", dump.basename)
        || dump.data.name != format!("{}.hnsw.data", dump.basename)
    {
        return Err(corrupt(
            dir,
            "graph dump file names do not match its basename",
        ));
    }
    dump.graph.verify(dir)?;
    dump.data.verify(dir)?;
    let dir_buf = dir.to_path_buf();
    let basename = dump.basename.clone();
    let loaded = std::panic::catch_unwind(move || {
        // See "Borrow" in the module documentation: the loader is leaked so that the graph can
        // be 'static; mapping is off, so the graph never reads it.
        let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(&dir_buf, &basename)));
        io.load_hnsw_with_dist(CosineDistance)
    });
    let hnsw = match loaded {
        Ok(Ok(hnsw)) => hnsw,
        Ok(Err(e)) => return Err(corrupt(dir, format!("hnsw_rs cannot load the graph: {e}"))),
        Err(panic) => {
            return Err(corrupt(
                dir,
                format!(
                    "hnsw_rs panicked while loading the graph: {}",
                    panic_message(panic.as_ref())
                ),
            ))
        }
    };
    let loaded_dim = hnsw.get_point_indexation().get_data_dimension();
    if loaded_dim != dim {
        return Err(corrupt(
            dir,
            format!("the graph holds vectors of dimension {loaded_dim}, the manifest says {dim}"),
        ));
    }
    Ok(hnsw)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
impl HnswIndex {
    /// Asserts the consistency of the graph, the id maps and the kept vectors.
    pub(crate) fn check_invariants(&self) {
        let state = read_lock(&self.state);
        let graph = &state.graph;
        assert_eq!(graph.hnsw.get_nb_point(), graph.points());
        assert_eq!(graph.dead.len(), graph.points());
        assert_eq!(graph.dead.iter().filter(|&&d| d).count(), graph.tombstones);
        assert_eq!(graph.points() - graph.tombstones, state.vectors.len());
        assert_eq!(graph.internal.len(), state.vectors.len());
        let mut graph_vectors = HashMap::new();
        let indexation = graph.hnsw.get_point_indexation();
        for layer in 0..MAX_LAYERS {
            if indexation.get_layer_nb_point(layer) == 0 {
                continue;
            }
            for point in indexation.get_layer_iterator(layer) {
                graph_vectors.insert(point.get_origin_id(), point.get_v().to_vec());
            }
        }
        assert_eq!(graph_vectors.len(), graph.points());
        for (id, v) in state.vectors.iter() {
            let internal = graph.internal[&id];
            assert_eq!(graph.ext_ids[internal], id);
            assert!(!graph.dead[internal]);
            assert_eq!(
                graph_vectors[&internal], v,
                "graph and kept vector of {id} differ"
            );
        }
    }
}
