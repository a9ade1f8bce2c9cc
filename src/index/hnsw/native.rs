//! The project's own HNSW graph: the default backend of [`super::HnswIndex`].
//!
//! # Layout
//!
//! Every point inserted gets a *slot*, an index into flat arrays that never move:
//! - `vectors`: the normalised vectors back to back (`slot * dim ..`), the only copy kept;
//! - `links0`: layer-0 neighbour lists, `2 * m + 1` `u32` per slot (a count, then the slots);
//! - `upper`: per slot, the lists of layers `1..=level`, `m + 1` `u32` each (empty for the
//!   ~94% of points that live on layer 0 only);
//! - `ids`, `levels`, `dead`: the caller's id, the point's top layer and its tombstone flag.
//!
//! Memory per point is `4 * dim + 4 * (2m + 1)` bytes plus about 40 bytes of bookkeeping,
//! which is what hnswlib spends; there is no second copy of the vectors.
//!
//! # Search
//!
//! The standard HNSW walk: a greedy descent through the upper layers, then a best-first search
//! of width `ef` on layer 0. Candidates and results are `u64` keys packing an order-preserving
//! map of `-dot` over the slot, so heaps compare integers and the exact score of a result is
//! read back from its key (no second dot product, and bit for bit the flat index's score). Before the distances of a point's
//! unvisited neighbours are computed, their vectors are prefetched together, so the memory
//! latency of the random reads overlaps. The caller's filter and the tombstones are applied to
//! the *results* only: rejected points are still walked through, so the graph stays connected
//! however many points are rejected. Visited marks are per-thread epoch stamps, reset in O(1).
//!
//! # Insertion
//!
//! Points are inserted a chunk at a time, in four phases:
//! 1. each new point's candidates are found in parallel against the graph as it was before the
//!    chunk (ef_construction-wide walks per layer), plus an exact comparison with the other
//!    points of the chunk, which the graph cannot reach yet; the closest `ef_construction` of
//!    both are kept (keeping all of them measured 30% slower to build and gave a graph 10-45%
//!    slower to search at equal recall: 100k 512-d vectors, m = 16, ef_construction = 200);
//! 2. each point picks its `m` neighbours per layer from its candidates with the usual
//!    diversity heuristic (a candidate is kept only if it is closer to the new point than to
//!    every neighbour already kept), also in parallel;
//! 3. the links are written, and every chosen neighbour is queued for a reverse link;
//! 4. each neighbour whose list overflows (`2m` on layer 0, `m` above) is pruned with the same
//!    heuristic, in parallel, and the lists are written back.
//!
//! Only phase 3 and the write-back are sequential, so construction scales with cores without
//! per-point locks. Levels are drawn from a seeded generator (`floor(-ln U / ln m)`), so a
//! given sequence of inserts always builds the same graph.
//!
//! # Dump
//!
//! One file, little-endian: magic `OBHNSW01`; `dim`, `m`, `points`, `entry` (`u64::MAX` for
//! none) as `u64`; per slot its id (`u64`), level (`u8`) and tombstone flag (`u8`); all vectors
//! (`f32`); all layer-0 lists; then the upper lists of every point with a level above 0, in slot
//! order. [`NativeGraph::read`] checks every count, level, link and value before building the
//! graph, so a damaged file gives an error, never a panic.

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::path::Path;

use rayon::prelude::*;

use super::super::persist::{
    self, corrupt, read_f32s, read_u64s, write_f32s, write_u64s, HnswSection, Manifest, ReadError,
};
use super::super::vector::{self, rank_order, VectorStore};
use super::super::{Hit, IndexConfig, IndexKind, Result};
use super::Backend;
use crate::data::rng::Rng;

const MAGIC: &[u8; 8] = b"OBHNSW01";
/// Highest layer a point may be drawn on; with m >= 2 a higher draw has probability < 2^-16.
const MAX_LEVEL: usize = 16;
/// Seed of the level generator of a new graph.
const LEVEL_SEED: u64 = 0x5EED_0B1D;
/// Below this many points a phase runs on the calling thread (thread start-up would dominate).
const PARALLEL_MIN: usize = 16;
/// Points whose vectors are prefetched ahead of their distances.
const PREFETCH_LINES: usize = 4;

/// A distance key: the distance's bit pattern in the high half, the slot in the low half.
type Key = u64;

#[inline]
fn key(distance_bits: u32, slot: u32) -> Key {
    (u64::from(distance_bits) << 32) | u64::from(slot)
}

#[inline]
fn slot_of(key: Key) -> u32 {
    key as u32
}

#[inline]
fn bits_of(key: Key) -> u32 {
    (key >> 32) as u32
}

/// The order key of a point at dot product `dot` from the query: the bits of `-dot` mapped so
/// that unsigned comparison follows `f32::total_cmp` (closest first; NaN and the negative
/// infinity of a length mismatch last). [`score_of`] recovers `dot` exactly.
#[inline]
fn distance_bits(a: &[f32], b: &[f32]) -> u32 {
    let bits = (-vector::dot(a, b)).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The dot product a key was made from, bit for bit.
#[inline]
fn score_of(key: Key) -> f32 {
    let bits = bits_of(key);
    let negated = if bits & 0x8000_0000 != 0 {
        bits & 0x7FFF_FFFF
    } else {
        !bits
    };
    -f32::from_bits(negated)
}

#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = values.as_ptr().cast::<i8>();
        let lines = (std::mem::size_of_val(values) / 64).clamp(1, PREFETCH_LINES);
        for line in 0..lines {
            // SAFETY: prefetching has no side effect on memory and cannot fault; the address
            // is within `values` (line * 64 < its byte length).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(base.add(line * 64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Per-thread search state: visited stamps and the two heaps, reused between searches.
#[derive(Default)]
struct Scratch {
    stamps: Vec<u32>,
    epoch: u32,
    candidates: BinaryHeap<std::cmp::Reverse<Key>>,
    results: BinaryHeap<Key>,
    /// Unvisited neighbours of the point being expanded.
    fresh: Vec<u32>,
}

impl Scratch {
    fn reset(&mut self, points: usize) {
        if self.stamps.len() < points {
            self.stamps.resize(points, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks `slot` visited; true when it was not yet.
    #[inline]
    fn visit(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        if *stamp == self.epoch {
            false
        } else {
            *stamp = self.epoch;
            true
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The graph: vectors, links and the slot bookkeeping. Not synchronised: the index wraps it in
/// a lock (searches take `&self`, inserts `&mut self`).
#[derive(Clone)]
pub(crate) struct NativeGraph {
    dim: usize,
    m: usize,
    ef_construction: usize,
    vectors: Vec<f32>,
    links0: Vec<u32>,
    upper: Vec<Box<[u32]>>,
    levels: Vec<u8>,
    ids: Vec<u64>,
    dead: Vec<bool>,
    /// Live id -> slot.
    slots: HashMap<u64, u32>,
    tombstones: usize,
    /// The entry point (a point of the top layer) and its level.
    entry: Option<(u32, usize)>,
    /// The level generator.
    rng: Rng,
}

/// What a new point found in phase 1 and kept in phase 2: its neighbours per layer.
type Forward = Vec<Vec<u32>>;

impl NativeGraph {
    pub(crate) fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> Self {
        Self {
            dim,
            m,
            ef_construction,
            vectors: Vec::with_capacity(capacity.saturating_mul(dim)),
            links0: Vec::with_capacity(capacity.saturating_mul(2 * m + 1)),
            upper: Vec::with_capacity(capacity),
            levels: Vec::with_capacity(capacity),
            ids: Vec::with_capacity(capacity),
            dead: Vec::with_capacity(capacity),
            slots: HashMap::with_capacity(capacity),
            tombstones: 0,
            entry: None,
            rng: Rng::new(LEVEL_SEED),
        }
    }

    /// Points in the graph, tombstoned ones included.
    pub(crate) fn points(&self) -> usize {
        self.ids.len()
    }

    /// Live points.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&[f32]> {
        self.slots.get(&id).map(|&slot| self.vector(slot))
    }

    /// Live ids and vectors, in slot order.
    pub(crate) fn live(&self) -> impl Iterator<Item = (u64, &[f32])> + '_ {
        (0..self.points())
            .filter(|&slot| !self.dead[slot])
            .map(|slot| (self.ids[slot], self.vector(slot as u32)))
    }

    #[inline]
    fn vector(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    #[inline]
    fn width0(&self) -> usize {
        2 * self.m + 1
    }

    /// Most links a point keeps on `level`.
    #[inline]
    fn capacity(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    #[inline]
    fn links(&self, slot: u32, level: usize) -> &[u32] {
        let list = if level == 0 {
            let start = slot as usize * self.width0();
            &self.links0[start..start + self.width0()]
        } else {
            let start = (level - 1) * (self.m + 1);
            &self.upper[slot as usize][start..start + self.m + 1]
        };
        &list[1..1 + list[0] as usize]
    }

    fn set_links(&mut self, slot: u32, level: usize, links: &[u32]) {
        debug_assert!(links.len() <= self.capacity(level));
        let list = if level == 0 {
            let start = slot as usize * self.width0();
            let width = self.width0();
            &mut self.links0[start..start + width]
        } else {
            let start = (level - 1) * (self.m + 1);
            let width = self.m + 1;
            &mut self.upper[slot as usize][start..start + width]
        };
        list[0] = links.len() as u32;
        list[1..1 + links.len()].copy_from_slice(links);
    }

    fn draw_level(&mut self) -> usize {
        // Uniform in (0, 1]: 53 random bits, plus one so that ln is finite.
        let uniform = ((self.rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let level = (-uniform.ln() / (self.m as f64).ln()).floor();
        (level as usize).min(MAX_LEVEL)
    }

    /// Adds a point with no links yet; tombstones the previous point of `id`.
    fn push_point(&mut self, id: u64, vector: &[f32], level: usize) -> u32 {
        let slot = self.ids.len() as u32;
        self.vectors.extend_from_slice(vector);
        self.links0.extend(std::iter::repeat_n(0, self.width0()));
        self.upper
            .push(vec![0; level * (self.m + 1)].into_boxed_slice());
        self.levels.push(level as u8);
        self.ids.push(id);
        self.dead.push(false);
        if let Some(old) = self.slots.insert(id, slot) {
            self.dead[old as usize] = true;
            self.tombstones += 1;
        }
        slot
    }

    /// Tombstones the point of `id`; returns whether `id` was live.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.slots.remove(&id) {
            Some(slot) => {
                self.dead[slot as usize] = true;
                self.tombstones += 1;
                true
            }
            None => false,
        }
    }

    /// Greedy descent from `from` (a point and its level) through the layers above `level`:
    /// the closest point found on the way.
    fn descend(&self, query: &[f32], from: (u32, usize), level: usize) -> Key {
        let (entry, top) = from;
        let mut best = key(distance_bits(query, self.vector(entry)), entry);
        for layer in (level + 1..=top).rev() {
            loop {
                let mut improved = false;
                for &n in self.links(slot_of(best), layer) {
                    let candidate = key(distance_bits(query, self.vector(n)), n);
                    if candidate < best {
                        best = candidate;
                        improved = true;
                    }
                }
                if !improved {
                    break;
                }
            }
        }
        best
    }

    /// Best-first search of width `ef` on `level` from `entries`. Returns up to `ef` accepted
    /// points, closest first; rejected points are walked through but never returned.
    fn search_layer(
        &self,
        query: &[f32],
        entries: &[Key],
        ef: usize,
        level: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Key> {
        SCRATCH.with(|scratch| {
            let mut guard = scratch.borrow_mut();
            let s = &mut *guard;
            s.reset(self.points());
            for &e in entries {
                if s.visit(slot_of(e)) {
                    s.candidates.push(std::cmp::Reverse(e));
                    if accept(slot_of(e)) {
                        s.results.push(e);
                    }
                }
            }
            while s.results.len() > ef {
                s.results.pop();
            }
            let mut fresh = std::mem::take(&mut s.fresh);
            while let Some(std::cmp::Reverse(current)) = s.candidates.pop() {
                if s.results.len() >= ef && s.results.peek().is_some_and(|&w| current > w) {
                    break;
                }
                fresh.clear();
                for &n in self.links(slot_of(current), level) {
                    if s.visit(n) {
                        prefetch(self.vector(n));
                        fresh.push(n);
                    }
                }
                for &n in &fresh {
                    let candidate = key(distance_bits(query, self.vector(n)), n);
                    let full = s.results.len() >= ef;
                    if full && s.results.peek().is_some_and(|&w| candidate >= w) {
                        continue;
                    }
                    s.candidates.push(std::cmp::Reverse(candidate));
                    if accept(n) {
                        s.results.push(candidate);
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                    }
                }
            }
            s.fresh = fresh;
            let mut found: Vec<Key> = s.results.drain().collect();
            found.sort_unstable();
            found
        })
    }

    /// Up to `ef` live points accepted by `filter` near `query` (normalised), with their exact
    /// scores (read back from the keys) and ranked; the caller truncates to its `k`.
    pub(crate) fn search(
        &self,
        query: &[f32],
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        let Some(start) = self.entry.map(|from| self.descend(query, from, 0)) else {
            return Vec::new();
        };
        let accept = |slot: u32| {
            !self.dead[slot as usize] && filter.is_none_or(|keep| keep(self.ids[slot as usize]))
        };
        let mut hits: Vec<Hit> = self
            .search_layer(query, &[start], ef, 0, &accept)
            .into_iter()
            .map(|k| Hit {
                id: self.ids[slot_of(k) as usize],
                score: score_of(k),
            })
            .collect();
        hits.sort_by(rank_order);
        hits
    }

    /// Exact top-`k` over the live points accepted by `filter`.
    pub(crate) fn scan(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        vector::scan(query, k, self.live(), filter)
    }

    /// Keeps up to `max` of `candidates` (sorted closest first, distances to the point being
    /// linked): a candidate is kept when it is closer to that point than to every candidate
    /// kept before it.
    fn select(&self, candidates: &[Key], max: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(max);
        for &c in candidates {
            if kept.len() >= max {
                break;
            }
            let slot = slot_of(c);
            let v = self.vector(slot);
            let diverse = kept
                .iter()
                .all(|&r| distance_bits(v, self.vector(r)) >= bits_of(c));
            if diverse {
                kept.push(slot);
            }
        }
        kept
    }

    /// Phases 1 and 2 for the new point `slot`: its neighbours on each of its layers.
    fn find_neighbours(&self, slot: u32, chunk: &[u32], before: Option<(u32, usize)>) -> Forward {
        let level = self.levels[slot as usize] as usize;
        let query = self.vector(slot);
        let mut candidates: Vec<Vec<Key>> = vec![Vec::new(); level + 1];
        if let Some(from @ (_, top)) = before {
            let all = |_: u32| true;
            let best = self.descend(query, from, level);
            let mut entries = vec![best];
            for layer in (0..=level.min(top)).rev() {
                let found = self.search_layer(query, &entries, self.ef_construction, layer, &all);
                candidates[layer].clone_from(&found);
                entries = found;
            }
        }
        for &other in chunk {
            if other == slot {
                continue;
            }
            let shared = level.min(self.levels[other as usize] as usize);
            let c = key(distance_bits(query, self.vector(other)), other);
            for layer_candidates in candidates.iter_mut().take(shared + 1) {
                layer_candidates.push(c);
            }
        }
        candidates
            .iter_mut()
            .map(|layer_candidates| {
                layer_candidates.sort_unstable();
                layer_candidates.dedup_by_key(|k| slot_of(*k));
                // As many candidates as a walk alone would give: the heuristic's cost grows
                // with their number.
                layer_candidates.truncate(self.ef_construction);
                self.select(layer_candidates, self.m)
            })
            .collect()
    }

    /// Phase 4 for one point: its list on `level` with `added` merged in, pruned if too long.
    fn merged_links(&self, slot: u32, level: usize, added: &[u32]) -> Vec<u32> {
        let mut links: Vec<u32> = self.links(slot, level).to_vec();
        for &a in added {
            if a != slot && !links.contains(&a) {
                links.push(a);
            }
        }
        if links.len() <= self.capacity(level) {
            return links;
        }
        let v = self.vector(slot);
        let mut candidates: Vec<Key> = links
            .iter()
            .map(|&n| key(distance_bits(v, self.vector(n)), n))
            .collect();
        candidates.sort_unstable();
        self.select(&candidates, self.capacity(level))
    }

    /// Inserts normalised vectors as one chunk (see the module documentation); a later
    /// duplicate id supersedes an earlier one.
    pub(crate) fn insert_chunk(&mut self, items: &[(u64, &[f32])]) {
        if items.is_empty() {
            return;
        }
        let before = self.entry;
        let chunk: Vec<u32> = items
            .iter()
            .map(|&(id, v)| {
                let level = self.draw_level();
                self.push_point(id, v, level)
            })
            .collect();

        let this = &*self;
        let forward: Vec<Forward> = if chunk.len() >= PARALLEL_MIN {
            chunk
                .par_iter()
                .map(|&s| this.find_neighbours(s, &chunk, before))
                .collect()
        } else {
            chunk
                .iter()
                .map(|&s| this.find_neighbours(s, &chunk, before))
                .collect()
        };

        let mut reverse: HashMap<(u32, usize), Vec<u32>> = HashMap::new();
        for (&slot, layers) in chunk.iter().zip(&forward) {
            for (level, links) in layers.iter().enumerate() {
                self.set_links(slot, level, links);
                for &n in links {
                    reverse.entry((n, level)).or_default().push(slot);
                }
            }
        }

        let this = &*self;
        let reverse: Vec<((u32, usize), Vec<u32>)> = reverse.into_iter().collect();
        let merge = |((n, level), added): &((u32, usize), Vec<u32>)| {
            (*n, *level, this.merged_links(*n, *level, added))
        };
        let merged: Vec<(u32, usize, Vec<u32>)> = if reverse.len() >= PARALLEL_MIN {
            reverse.par_iter().map(merge).collect()
        } else {
            reverse.iter().map(merge).collect()
        };
        for (n, level, links) in merged {
            self.set_links(n, level, &links);
        }

        for &slot in &chunk {
            let level = self.levels[slot as usize] as usize;
            if self.entry.is_none_or(|(_, top)| level > top) {
                self.entry = Some((slot, level));
            }
        }
    }

    /// Writes the dump described in the module documentation.
    pub(crate) fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        let entry = self.entry.map_or(u64::MAX, |(slot, _)| u64::from(slot));
        write_u64s(
            w,
            &[self.dim as u64, self.m as u64, self.points() as u64, entry],
        )?;
        let mut meta = Vec::with_capacity(self.points() * 10);
        for slot in 0..self.points() {
            meta.extend_from_slice(&self.ids[slot].to_le_bytes());
            meta.push(self.levels[slot]);
            meta.push(u8::from(self.dead[slot]));
        }
        w.write_all(&meta)?;
        write_f32s(w, &self.vectors)?;
        write_u32s(w, &self.links0)?;
        for list in &self.upper {
            write_u32s(w, list)?;
        }
        Ok(())
    }

    /// Reads a dump written by [`NativeGraph::write`], checking it whole. `file_len` bounds
    /// every allocation before it is made.
    pub(crate) fn read(
        r: &mut dyn Read,
        expected_dim: usize,
        ef_construction: usize,
        file_len: u64,
    ) -> std::result::Result<Self, ReadError> {
        let invalid = |reason: String| Err(ReadError::Invalid(reason));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return invalid("not an HNSW graph (bad magic)".into());
        }
        let header = read_u64s(r, 4)?;
        let (dim, m, points, entry) = (header[0], header[1], header[2], header[3]);
        if dim != expected_dim as u64 {
            return invalid(format!(
                "graph of dimension {dim}, the manifest says {expected_dim}"
            ));
        }
        if !(2..=255).contains(&m) {
            return invalid(format!("m = {m} is out of range"));
        }
        let (dim, m) = (dim as usize, m as usize);
        let width0 = 2 * m as u64 + 1;
        // Each point needs at least its metadata, vector and layer-0 list.
        let per_point = 10 + 4 * dim as u64 + 4 * width0;
        if points > u64::from(u32::MAX) || points.saturating_mul(per_point) > file_len {
            return invalid(format!("{file_len} bytes cannot hold {points} points"));
        }
        let points = points as usize;
        let mut meta = vec![0u8; points * 10];
        r.read_exact(&mut meta)?;
        let mut graph = NativeGraph::new(dim, m, ef_construction, points);
        let mut upper_total = 0u64;
        for (slot, record) in meta.chunks_exact(10).enumerate() {
            let id = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            let (level, dead) = (record[8], record[9]);
            if level as usize > MAX_LEVEL || dead > 1 {
                return invalid(format!("point {slot} has level {level}, flag {dead}"));
            }
            upper_total += u64::from(level) * (m as u64 + 1);
            graph.ids.push(id);
            graph.levels.push(level);
            graph.dead.push(dead == 1);
            if dead == 1 {
                graph.tombstones += 1;
            } else if graph.slots.insert(id, slot as u32).is_some() {
                return invalid(format!("id {id} has two live points"));
            }
        }
        if upper_total.saturating_mul(4) > file_len {
            return invalid("upper layers larger than the file".into());
        }
        graph.vectors = read_f32s(r, points * dim)?;
        if let Some(position) = graph.vectors.iter().position(|x| !x.is_finite()) {
            return invalid(format!("non-finite value in point {}", position / dim));
        }
        graph.links0 = read_u32s(r, points * width0 as usize)?;
        for slot in 0..points {
            let level = graph.levels[slot] as usize;
            graph
                .upper
                .push(read_u32s(r, level * (m + 1))?.into_boxed_slice());
        }
        let mut extra = [0u8; 1];
        if r.read(&mut extra)? != 0 {
            return invalid("trailing bytes after the graph".into());
        }
        graph.entry = match entry {
            u64::MAX if points == 0 => None,
            e if e < points as u64 => Some((e as u32, graph.levels[e as usize] as usize)),
            e => return invalid(format!("entry point {e} of {points} points")),
        };
        if let Some((_, top)) = graph.entry {
            if graph.levels.iter().any(|&l| l as usize > top) {
                return invalid("the entry point is not on the top layer".into());
            }
        }
        for slot in 0..points as u32 {
            for level in 0..=graph.levels[slot as usize] as usize {
                let list = if level == 0 {
                    &graph.links0[slot as usize * width0 as usize..][..width0 as usize]
                } else {
                    &graph.upper[slot as usize][(level - 1) * (m + 1)..][..m + 1]
                };
                let count = list[0] as usize;
                if count > graph.capacity(level) {
                    return invalid(format!("point {slot} has {count} links on layer {level}"));
                }
                for &n in &list[1..1 + count] {
                    if n == slot
                        || n as usize >= points
                        || (graph.levels[n as usize] as usize) < level
                    {
                        return invalid(format!("point {slot} links to {n} on layer {level}"));
                    }
                }
            }
        }
        graph.rng = Rng::new(LEVEL_SEED ^ points as u64);
        Ok(graph)
    }

    /// Asserts the structural invariants (test support).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let points = self.points();
        assert_eq!(self.vectors.len(), points * self.dim);
        assert_eq!(self.links0.len(), points * self.width0());
        assert_eq!(self.dead.iter().filter(|&&d| d).count(), self.tombstones);
        assert_eq!(points - self.tombstones, self.slots.len());
        for (&id, &slot) in &self.slots {
            assert_eq!(self.ids[slot as usize], id);
            assert!(!self.dead[slot as usize]);
        }
        for slot in 0..points as u32 {
            for level in 0..=self.levels[slot as usize] as usize {
                let links = self.links(slot, level);
                assert!(links.len() <= self.capacity(level));
                for &n in links {
                    assert_ne!(n, slot, "self link");
                    assert!(self.levels[n as usize] as usize >= level);
                }
            }
        }
        if points > 0 {
            let (_, top) = self.entry.expect("an entry point");
            assert!(self.levels.iter().all(|&l| l as usize <= top));
        }
    }
}

fn write_u32s(w: &mut dyn Write, values: &[u32]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(values.len().min(1 << 18) * 4);
    for chunk in values.chunks(1 << 18) {
        bytes.clear();
        for v in chunk {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&bytes)?;
    }
    Ok(())
}

fn read_u32s(r: &mut dyn Read, count: usize) -> std::result::Result<Vec<u32>, ReadError> {
    let mut out = Vec::with_capacity(count.min(1 << 20));
    let mut bytes = vec![0u8; count.min(1 << 18) * 4];
    let mut left = count;
    while left > 0 {
        let n = left.min(1 << 18);
        r.read_exact(&mut bytes[..n * 4])?;
        out.extend(
            bytes[..n * 4]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4-byte chunk"))),
        );
        left -= n;
    }
    Ok(out)
}

impl Backend for NativeGraph {
    const KIND: IndexKind = IndexKind::Hnsw;

    fn create(dim: usize, config: &IndexConfig, capacity: usize) -> Self {
        NativeGraph::new(dim, config.m, config.ef_construction, capacity)
    }

    fn live_len(&self) -> usize {
        self.len()
    }

    fn points(&self) -> usize {
        NativeGraph::points(self)
    }

    fn tombstone_count(&self) -> usize {
        self.tombstones
    }

    fn vector_of(&self, id: u64) -> Option<&[f32]> {
        self.get(id)
    }

    fn live_ids(&self) -> Vec<u64> {
        self.ids()
    }

    fn live_copy(&self) -> VectorStore {
        let mut copy = VectorStore::with_capacity(self.dim, self.len());
        for (id, v) in self.live() {
            copy.upsert(id, v);
        }
        copy
    }

    fn insert_items(&mut self, items: &[(u64, &[f32])]) {
        self.insert_chunk(items);
    }

    fn remove_id(&mut self, id: u64) -> bool {
        self.remove(id)
    }

    fn scan_items(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        self.scan(query, k, filter)
    }

    fn walk(
        &self,
        query: &[f32],
        _k: usize,
        ef: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<Hit> {
        // Results hold accepted points only, so the walk needs no widening for tombstones.
        self.search(query, ef, filter)
    }

    fn save_files(&self, dir: &Path, stamp: u64, config: &IndexConfig) -> Result<Manifest> {
        let name = format!("graph-{}.hnsw", persist::unique_tag(stamp));
        let file = persist::write_new_file(dir, &name, |w| self.write(w))?;
        let mut manifest = Manifest::new(IndexKind::Hnsw, self.dim, stamp, self.len());
        manifest.hnsw = Some(HnswSection {
            m: self.m,
            ef_construction: config.ef_construction,
            points: self.points(),
            tombstones: self.tombstones,
            file,
        });
        Ok(manifest)
    }

    fn load_files(dir: &Path, manifest: &Manifest, config: &IndexConfig) -> Result<Self> {
        let section = manifest
            .hnsw
            .as_ref()
            .ok_or_else(|| corrupt(dir, "the manifest has no HNSW section"))?;
        let graph = persist::read_checked(dir, &section.file, |r, file_len| {
            NativeGraph::read(r, manifest.dim, config.ef_construction, file_len)
        })?;
        if graph.m != section.m
            || graph.points() != section.points
            || graph.tombstones != section.tombstones
        {
            return Err(corrupt(
                dir,
                "graph parameters or point counts disagree with the manifest",
            ));
        }
        Ok(graph)
    }

    #[cfg(test)]
    fn check_backend(&self) {
        self.check_invariants();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
        values.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn keys_order_by_descending_dot_and_give_it_back_exactly() {
        let q = unit(&[1.0, 0.5, -0.25, 2.0]);
        let points: Vec<Vec<f32>> = [
            [1.0, 0.5, -0.25, 2.0],
            [-1.0, -0.5, 0.25, -2.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.3, -0.2, 0.9, 0.1],
            [-0.4, 0.1, 0.0, 0.2],
        ]
        .iter()
        .map(|p| unit(p))
        .collect();
        let mut keys: Vec<(Key, f32)> = points
            .iter()
            .enumerate()
            .map(|(slot, p)| (key(distance_bits(&q, p), slot as u32), vector::dot(&q, p)))
            .collect();
        for &(k, dot) in &keys {
            assert_eq!(score_of(k).to_bits(), dot.to_bits());
        }
        keys.sort_unstable_by_key(|&(k, _)| k);
        assert!(keys.windows(2).all(|w| w[0].1 >= w[1].1), "{keys:?}");
    }

    fn sample_graph() -> NativeGraph {
        let mut graph = NativeGraph::new(3, 4, 16, 0);
        let vectors: Vec<Vec<f32>> = (0..60)
            .map(|i| {
                let x = i as f32;
                unit(&[x.sin() + 1.5, x.cos(), (x * 0.3).sin()])
            })
            .collect();
        let items: Vec<(u64, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * 3, &v[..]))
            .collect();
        graph.insert_chunk(&items[..25]);
        graph.insert_chunk(&items[25..]);
        graph.remove(6);
        graph.remove(30);
        graph
    }

    fn dump(graph: &NativeGraph) -> Vec<u8> {
        let mut bytes = Vec::new();
        graph.write(&mut bytes).unwrap();
        bytes
    }

    fn read(bytes: &[u8]) -> std::result::Result<NativeGraph, ReadError> {
        NativeGraph::read(&mut &bytes[..], 3, 16, bytes.len() as u64)
    }

    #[test]
    fn a_dump_reads_back_identically() {
        let graph = sample_graph();
        graph.check_invariants();
        let bytes = dump(&graph);
        let back = read(&bytes).ok().expect("a valid dump");
        back.check_invariants();
        assert_eq!(dump(&back), bytes);
        let q = unit(&[1.0, 0.2, 0.1]);
        assert_eq!(graph.search(&q, 10, None), back.search(&q, 10, None));
        assert_eq!(back.len(), 58);
        assert_eq!(back.get(6), None);
        assert!(back.get(9).is_some());
    }

    /// Every single-byte change and every truncation of a dump (checksums aside) gives an
    /// error or a graph that keeps its invariants and answers searches: never a panic.
    #[test]
    fn damaged_dumps_never_panic() {
        let bytes = dump(&sample_graph());
        let q = unit(&[0.5, 0.5, 0.1]);
        let check = |damaged: &[u8]| {
            if let Ok(graph) = read(damaged) {
                graph.check_invariants();
                graph.search(&q, 8, None);
            }
        };
        for at in 0..bytes.len() {
            for value in [0x00, 0xff, bytes[at] ^ 0x01, bytes[at].wrapping_add(0x80)] {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                check(&damaged);
            }
        }
        for len in 0..bytes.len() {
            assert!(read(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_err());
    }
}
