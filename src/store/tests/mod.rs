//! Tests of the store layer. `v1` writes format-1 databases for the migration tests; `crash`
//! kills a writer process with SIGKILL.

mod bench;
mod crash;
mod migration;
mod ops;
mod prop;
mod v1;

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{IndexParams, NewCollection, NewItem, SledStore};

pub(super) const MODEL: &str = "test-model";
pub(super) const DIM: u32 = 4;

pub(super) fn open(dir: &Path) -> SledStore {
    SledStore::open(dir).expect("open store")
}

/// The raw sled database of a data directory, waiting for the lock a just-dropped handle may
/// still hold.
pub(super) fn raw_sled(db_dir: &Path) -> sled::Db {
    super::sled::open_db(db_dir, &super::SledOptions::default()).expect("open raw sled")
}

pub(super) fn new_collection(name: &str) -> NewCollection {
    NewCollection {
        name: name.to_owned(),
        model: MODEL.to_owned(),
        dim: DIM,
        index: IndexParams::default(),
        auto_tags: vec!["tag-a".into()],
    }
}

/// A deterministic vector derived from `k`.
pub(super) fn vector(k: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|i| ((k * 31 + i * 7) % 97) as f32 / 97.0 - 0.5)
        .collect()
}

pub(super) fn item(id: Option<&str>, modality: &str, content: Option<&[u8]>, k: u64) -> NewItem {
    NewItem {
        id: id.map(str::to_owned),
        modality: modality.to_owned(),
        content: content.map(|c| c.to_vec().into()),
        content_type: content.map(|_| "application/octet-stream".to_owned()),
        text: None,
        metadata: json!({ "k": k }),
        model: MODEL.to_owned(),
        weights_hash: "w0".to_owned(),
        preprocess_version: "1".to_owned(),
        vector: vector(k),
    }
}

pub(super) fn blob_path(data_dir: &Path, coll: &str, hash: &str) -> PathBuf {
    data_dir
        .join("blobs")
        .join(coll)
        .join(&hash[..2])
        .join(hash)
}

/// Every regular file under `dir`, relative paths, sorted.
pub(super) fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
