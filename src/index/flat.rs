//! Exact index: every search scans all vectors.
//!
//! Vectors are kept back to back in one `Vec<f32>` with id <-> slot maps; a delete moves the
//! last vector into the freed slot. A scan is one linear pass with a vectorised dot product and
//! a bounded heap, so its cost is bound by memory bandwidth (a 512-d vector is 2 KiB). It is
//! also the reference the HNSW index is tested against.
//!
//! Dump: one file `vectors-<tag>.bin`, little-endian: magic `OBFLAT01`, `dim: u64`,
//! `count: u64`, `count` ids (`u64`), then `count * dim` values (`f32`), already normalised.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::persist::{
    self, corrupt, io_error, read_f32s, read_u64s, write_f32s, write_u64s, Manifest, ReadError,
};
use super::vector::{self, VectorStore};
use super::{
    check_dim, normalise_batch, read_lock, write_lock, Hit, Index, IndexConfig, IndexKind, Result,
    SearchParams,
};

const MAGIC: &[u8; 8] = b"OBFLAT01";
const HEADER_LEN: u64 = 24;

/// Exact index over normalised vectors.
#[derive(Debug)]
pub struct FlatIndex {
    dim: usize,
    store: RwLock<VectorStore>,
    /// Serialises saves of this index.
    saving: Mutex<()>,
}

impl FlatIndex {
    /// An empty index for vectors of dimension `dim`.
    pub fn new(dim: usize, config: &IndexConfig) -> Result<Self> {
        check_dim(dim)?;
        Ok(Self::from_store(VectorStore::with_capacity(
            dim,
            config.max_elements.min(1 << 20),
        )))
    }

    fn from_store(store: VectorStore) -> Self {
        Self {
            dim: store.dim(),
            store: RwLock::new(store),
            saving: Mutex::new(()),
        }
    }

    /// Loads a flat dump from `dir`.
    pub fn load(dir: &Path, config: &IndexConfig) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        Self::load_manifest(dir, &manifest, config)
    }

    pub(crate) fn load_manifest(dir: &Path, manifest: &Manifest, _: &IndexConfig) -> Result<Self> {
        let entry = match (&manifest.kind, &manifest.vectors) {
            (IndexKind::Flat, Some(entry)) => entry,
            _ => {
                return Err(corrupt(
                    dir,
                    format!("the dump holds a {} index, not a flat one", manifest.kind),
                ))
            }
        };
        let store = persist::read_checked(dir, entry, |r, file_len| {
            read_vectors(r, manifest.dim, manifest.live, file_len)
        })?;
        Ok(Self::from_store(store))
    }
}

impl Index for FlatIndex {
    fn kind(&self) -> IndexKind {
        IndexKind::Flat
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        read_lock(&self.store).len()
    }

    fn insert(&self, id: u64, vector: &[f32]) -> Result<()> {
        let v = vector::normalised(self.dim, vector)?;
        write_lock(&self.store).upsert(id, &v);
        Ok(())
    }

    fn insert_batch(&self, items: &[(u64, &[f32])]) -> Result<()> {
        let items = normalise_batch(self.dim, items)?;
        let mut store = write_lock(&self.store);
        for (id, v) in &items {
            store.upsert(*id, v);
        }
        Ok(())
    }

    fn delete(&self, id: u64) -> bool {
        write_lock(&self.store).remove(id)
    }

    fn contains(&self, id: u64) -> bool {
        read_lock(&self.store).contains(id)
    }

    fn ids(&self) -> Vec<u64> {
        read_lock(&self.store).ids().to_vec()
    }

    fn holds(&self, id: u64, vector: &[f32]) -> bool {
        vector::holds(read_lock(&self.store).get(id), self.dim, vector)
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        _params: &SearchParams,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        let query = vector::normalised(self.dim, query)?;
        Ok(read_lock(&self.store).search(&query, k, filter))
    }

    fn save(&self, dir: &Path, stamp: u64) -> Result<()> {
        let _saving = super::lock(&self.saving);
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let store = read_lock(&self.store);
        let name = format!("vectors-{}.bin", persist::unique_tag(stamp));
        let entry = persist::write_new_file(dir, &name, |w| write_vectors(w, &store))?;
        let mut manifest = Manifest::new(IndexKind::Flat, store.dim(), stamp, store.len());
        drop(store);
        manifest.vectors = Some(entry);
        manifest.publish(dir)
    }
}

fn write_vectors(w: &mut dyn Write, store: &VectorStore) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&(store.dim() as u64).to_le_bytes())?;
    w.write_all(&(store.len() as u64).to_le_bytes())?;
    write_u64s(w, store.ids())?;
    write_f32s(w, store.data())
}

/// Reads a vectors file; sizes are checked against the file length before any allocation.
fn read_vectors(
    r: &mut dyn Read,
    dim: usize,
    live: usize,
    file_len: u64,
) -> Result<VectorStore, ReadError> {
    let invalid = |s: String| Err(ReadError::Invalid(s));
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header)?;
    if &header[..8] != MAGIC {
        return invalid("not a vectors file (bad magic)".into());
    }
    let file_dim = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if file_dim != dim as u64 || count != live as u64 {
        return invalid(format!(
            "file holds {count} vectors of dimension {file_dim}, the manifest says {live} of {dim}"
        ));
    }
    let expected = (dim as u64)
        .checked_mul(4)
        .and_then(|per| per.checked_add(8))
        .and_then(|per| per.checked_mul(count))
        .and_then(|body| body.checked_add(HEADER_LEN));
    if expected != Some(file_len) {
        return invalid(format!(
            "file is {file_len} bytes, {count} vectors of dimension {dim} need {expected:?}"
        ));
    }
    let ids = read_u64s(r, live)?;
    let data = read_f32s(r, live * dim)?;
    let mut store = VectorStore::with_capacity(dim, live);
    for (id, v) in ids.iter().zip(data.chunks_exact(dim)) {
        if v.iter().any(|x| !x.is_finite()) {
            return invalid(format!("vector of id {id} has a non-finite value"));
        }
        if store.upsert(*id, v) {
            return invalid(format!("id {id} appears twice"));
        }
    }
    Ok(store)
}
