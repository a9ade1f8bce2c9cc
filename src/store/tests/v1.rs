//! Writes a database in storage format 1 (see `migrations/0001_initial.md`) with raw sled calls
//! and JSON literals, independently of the current code, so the migration tests open a real
//! format-1 database.

use std::path::Path;

use serde_json::json;

use super::super::sha256_hex;
use super::{vector, DIM, MODEL};

/// One item of the fixture, as the tests expect to read it back.
pub(super) struct V1Item {
    pub coll: &'static str,
    pub id: &'static str,
    pub seq: u64,
    pub modality: &'static str,
    pub content: Option<&'static [u8]>,
    pub text: Option<&'static str>,
    /// Argument of [`vector`] giving the item's vector.
    pub k: u64,
}

pub(super) const ITEMS: &[V1Item] = &[
    V1Item {
        coll: "photos",
        id: "cat",
        seq: 0,
        modality: "image",
        content: Some(b"cat-jpeg"),
        text: None,
        k: 10,
    },
    V1Item {
        coll: "photos",
        id: "dog",
        seq: 1,
        modality: "image",
        content: Some(b"dog-jpeg"),
        text: None,
        k: 11,
    },
    // seq 2 was deleted.
    V1Item {
        coll: "photos",
        id: "caption",
        seq: 3,
        modality: "text",
        content: None,
        text: Some("a cat"),
        k: 13,
    },
    // Stored with deduplication off: shares the content file of "dog".
    V1Item {
        coll: "photos",
        id: "dog-copy",
        seq: 4,
        modality: "image",
        content: Some(b"dog-jpeg"),
        text: None,
        k: 14,
    },
    V1Item {
        coll: "sounds",
        id: "bark",
        seq: 0,
        modality: "audio",
        content: Some(b"woof"),
        text: None,
        k: 20,
    },
];

/// `(name, next_seq, generation)` of the fixture's collections.
pub(super) const COLLECTIONS: &[(&str, u64, u64)] = &[("photos", 5, 6), ("sounds", 1, 1)];

fn key(coll: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = coll.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// Writes the fixture into `data_dir` (`db/` and `blobs/`).
pub(super) fn write(data_dir: &Path) {
    let db = super::raw_sled(&data_dir.join("db"));
    let meta = db.open_tree("meta").unwrap();
    let collections = db.open_tree("collections").unwrap();
    let items = db.open_tree("items").unwrap();
    let seqs = db.open_tree("seqs").unwrap();
    let vectors = db.open_tree("vectors").unwrap();
    let _purging = db.open_tree("purging").unwrap();

    meta.insert("format_version", &1u32.to_le_bytes()).unwrap();
    for (name, next_seq, generation) in COLLECTIONS {
        let rec = json!({
            "name": name,
            "model": MODEL,
            "dim": DIM,
            "index": {"m": 16, "ef_construction": 200, "ef_search": 64},
            "auto_tags": [],
            "created_at": 1_700_000_000_000u64,
            "next_seq": next_seq,
            "generation": generation,
        });
        collections
            .insert(name.as_bytes(), serde_json::to_vec(&rec).unwrap())
            .unwrap();
    }
    for it in ITEMS {
        let hash = it.content.map(sha256_hex);
        let rec = json!({
            "id": it.id,
            "seq": it.seq,
            "modality": it.modality,
            "content_hash": hash,
            "content_type": it.content.map(|_| "application/octet-stream"),
            "content_len": it.content.map_or(0, <[u8]>::len),
            "text": it.text,
            "metadata": {"source": "v1"},
            "model": MODEL,
            "weights_hash": "w0",
            "preprocess_version": "1",
            "created_at": 1_700_000_000_001u64,
        });
        items
            .insert(
                key(it.coll, it.id.as_bytes()),
                serde_json::to_vec(&rec).unwrap(),
            )
            .unwrap();
        seqs.insert(key(it.coll, &it.seq.to_be_bytes()), it.id.as_bytes())
            .unwrap();
        let v: Vec<u8> = vector(it.k).iter().flat_map(|x| x.to_le_bytes()).collect();
        vectors
            .insert(key(it.coll, &it.seq.to_be_bytes()), v)
            .unwrap();
        if let (Some(h), Some(c)) = (hash, it.content) {
            let dir = data_dir.join("blobs").join(it.coll).join(&h[..2]);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(&h), c).unwrap();
        }
    }
    db.flush().unwrap();
}
