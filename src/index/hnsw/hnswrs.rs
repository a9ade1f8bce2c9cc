//! The hnsw_rs 0.3.5 backend of [`super::HnswRsIndex`] (kind `hnsw_rs`).
//!
//! # What this backend adds to hnsw_rs
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
//!   [`super::GraphIndex`]'s `needs_rebuild` turns true once they reach [`IndexConfig::rebuild_ratio`]
//!   (20%) of the graph's points; the index never rebuilds on its own.
//! - **Kept vectors.** The wrapper keeps the live vectors in a dense `VectorStore`. It serves
//!   exact searches (`exact: true`, and every search while the index holds fewer than
//!   [`IndexConfig::exact_threshold`] items, where a scan is both exact and faster), re-scores
//!   graph candidates with the exact dot product (so scores equal the flat index's bit for bit),
//!   and is the source of rebuilds. It costs one more copy of the vectors in memory.
//!
//! # Persistence
//!
//! A dump is hnsw_rs's own `file_dump` (files `graph-<tag>.hnsw.graph` and `.hnsw.data`) plus
//! `graph-<tag>.ids` (little-endian: magic `OBGIDS01`, `count: u64`, `count` external ids as
//! `u64`, then `count` tombstone flags as bytes) and the manifest of the `persist` module, which
//! records every file's length and XXH64. hnsw_rs writes native-endian files without checksums
//! and its loader asserts, indexes out of bounds, or even exits the process on malformed input,
//! so loading verifies both checksums *before* calling the loader, checks that the loader opens
//! exactly the verified files, runs it under [`crate::guard::contain`] as a last resort, and then
//! cross-checks the graph against the id map. The kept vectors are read back from the graph's
//! points, so vectors are not stored twice on disk.
//!
//! Loading hnsw_rs's dump was preferred to rebuilding the graph by re-inserting the vectors:
//! re-insertion costs the full build time (2.1k 512-d vectors per second on two cores at
//! m = 16, ef_construction = 200, BENCHMARKS.md), while a load only reads and links
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
//! hnsw_rs records the distance's type name (`omnibind::index::hnsw::hnswrs::CosineDistance`) in the
//! dump and refuses dumps of another name, so moving that type invalidates old dumps (an error,
//! the caller rebuilds).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use hnsw_rs::prelude::{AnnT, Distance, FilterT, Hnsw, HnswIo, Neighbour};

use crate::guard::contain;

use super::super::persist::{
    self, corrupt, io_error, read_u64s, write_u64s, FileEntry, GraphDump, GraphSection, Manifest,
    ReadError,
};
use super::super::vector::{self, rank_order, VectorStore};
use super::super::{Hit, IndexConfig, IndexKind, Result};
use super::Backend;

/// Below this many vectors a chunk is inserted sequentially (thread start-up would dominate).
const PARALLEL_MIN: usize = 64;
/// hnsw_rs's maximum number of layers.
const MAX_LAYERS: usize = 16;

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
pub(crate) struct HnswRsGraph {
    vectors: VectorStore,
    graph: Graph,
}

impl HnswRsGraph {
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

impl Backend for HnswRsGraph {
    const KIND: IndexKind = IndexKind::HnswRs;

    fn create(dim: usize, config: &IndexConfig, capacity: usize) -> Self {
        Self {
            vectors: VectorStore::with_capacity(dim, capacity),
            graph: Graph::new(config, capacity),
        }
    }

    fn live_len(&self) -> usize {
        self.vectors.len()
    }

    fn points(&self) -> usize {
        self.graph.points()
    }

    fn tombstone_count(&self) -> usize {
        self.graph.tombstones
    }

    fn vector_of(&self, id: u64) -> Option<&[f32]> {
        self.vectors.get(id)
    }

    fn live_ids(&self) -> Vec<u64> {
        self.vectors.ids().to_vec()
    }

    fn live_copy(&self) -> VectorStore {
        self.vectors.clone()
    }

    fn insert_items(&mut self, items: &[(u64, &[f32])]) {
        for &(id, v) in items {
            self.vectors.upsert(id, v);
        }
        self.graph.insert_many(items);
    }

    fn remove_id(&mut self, id: u64) -> bool {
        self.graph.remove(id);
        self.vectors.remove(id)
    }

    fn scan_items(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        self.vectors.search(query, k, filter)
    }

    fn walk(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        self.graph_search(query, k, ef, filter)
    }

    fn save_files(&self, dir: &Path, stamp: u64, config: &IndexConfig) -> Result<Manifest> {
        let graph = &self.graph;
        let base = format!("graph-{}", persist::unique_tag(stamp));
        let ids = persist::write_new_file(dir, &format!("{base}.ids"), |w| {
            write_ids(w, &graph.ext_ids, &graph.dead)
        })?;
        let dump = if graph.hnsw.get_nb_point() == 0 {
            None
        } else {
            Some(dump_graph(dir, &base, &graph.hnsw)?)
        };
        let mut manifest = Manifest::new(
            IndexKind::HnswRs,
            self.vectors.dim(),
            stamp,
            self.vectors.len(),
        );
        manifest.graph = Some(GraphSection {
            m: config.m,
            ef_construction: config.ef_construction,
            points: graph.points(),
            tombstones: graph.tombstones,
            ids,
            dump,
        });
        Ok(manifest)
    }

    fn load_files(dir: &Path, manifest: &Manifest, config: &IndexConfig) -> Result<Self> {
        let section = manifest
            .graph
            .as_ref()
            .ok_or_else(|| corrupt(dir, "the manifest has no hnsw_rs section"))?;
        let dim = manifest.dim;
        let (ext_ids, dead) = read_ids(dir, &section.ids, section.points)?;
        let tombstones = dead.iter().filter(|&&d| d).count();
        if tombstones != section.tombstones || section.points - tombstones != manifest.live {
            return Err(corrupt(
                dir,
                "tombstone and live counts disagree with the manifest",
            ));
        }

        let hnsw = match &section.dump {
            None if section.points == 0 => Graph::new(config, 0).hnsw,
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
        Ok(Self { vectors, graph })
    }

    #[cfg(test)]
    fn check_backend(&self) {
        self.check_invariants();
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
    let (ids, flags) = persist::read_checked(dir, entry, |r, file_len| {
        let expected = (points as u64)
            .checked_mul(9)
            .and_then(|body| body.checked_add(IDS_HEADER_LEN));
        if expected != Some(file_len) {
            return Err(ReadError::Invalid(format!(
                "{file_len} bytes cannot hold {points} ids"
            )));
        }
        let mut header = [0u8; IDS_HEADER_LEN as usize];
        r.read_exact(&mut header)?;
        if &header[..8] != IDS_MAGIC {
            return Err(ReadError::Invalid("not an id map (bad magic)".into()));
        }
        let count = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if count != points as u64 {
            return Err(ReadError::Invalid(format!(
                "id map holds {count} ids, the manifest says {points}"
            )));
        }
        let ids = read_u64s(r, points)?;
        let mut flags = vec![0u8; points];
        r.read_exact(&mut flags)?;
        Ok((ids, flags))
    })?;
    if flags.iter().any(|&f| f > 1) {
        return Err(corrupt(&entry.path_in(dir)?, "invalid tombstone flag"));
    }
    Ok((ids, flags.into_iter().map(|f| f == 1).collect()))
}

/// Runs hnsw_rs's `file_dump` for `base` in `dir`, then fsyncs and checksums its two files.
fn dump_graph(dir: &Path, base: &str, hnsw: &Hnswg) -> Result<GraphDump> {
    let dumped = contain(|| hnsw.file_dump(dir, base));
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
                io::Error::other(format!("hnsw_rs panicked while dumping the graph: {panic}")),
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
    let loaded = contain(move || {
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
                format!("hnsw_rs panicked while loading the graph: {panic}"),
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

#[cfg(test)]
impl HnswRsGraph {
    /// Asserts the consistency of the graph, the id maps and the kept vectors.
    fn check_invariants(&self) {
        let state = self;
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
