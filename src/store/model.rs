//! Records kept by the store, the inputs that create them, and their validation rules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{Result, StoreError};

/// Longest collection name, in bytes (names are ASCII).
pub const MAX_COLLECTION_NAME_LEN: usize = 64;
/// Longest item id, in bytes of UTF-8.
pub const MAX_ITEM_ID_LEN: usize = 128;
/// Longest modality name, in bytes (ASCII).
pub const MAX_MODALITY_LEN: usize = 32;
/// Largest vector dimension a collection may declare.
pub const MAX_DIM: u32 = 65_536;
/// Longest short label (model name, weights hash, preprocess version, content type, tag).
pub const MAX_LABEL_LEN: usize = 256;

/// HNSW build and search parameters of a collection. The store keeps them; the index layer
/// interprets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Links per node.
    pub m: u32,
    /// Candidate list size while building.
    pub ef_construction: u32,
    /// Default candidate list size while searching.
    pub ef_search: u32,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// What a caller supplies to create a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewCollection {
    /// 1-64 characters of `[A-Za-z0-9_-]`.
    pub name: String,
    /// Name of the encoder whose vectors the collection holds.
    pub model: String,
    /// Vector dimension, 1..=65536.
    pub dim: u32,
    pub index: IndexParams,
    /// Labels the ingest layer computes for every new item (opaque to the store).
    pub auto_tags: Vec<String>,
}

/// A stored collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub name: String,
    pub model: String,
    pub dim: u32,
    pub index: IndexParams,
    pub auto_tags: Vec<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// Next sequence number to assign; sequence numbers are never reused.
    pub next_seq: u64,
    /// Changes with every call that changes the collection (creation included): it takes the
    /// next value of a database-wide clock, so it strictly increases per collection and two
    /// changes never share a value, even across a collection deleted and recreated under the
    /// same name. The index layer saves it next to an index dump and compares it at start-up
    /// to know whether the dump is stale.
    pub generation: u64,
    /// Changes whenever a collection of this name is created anew: the clock value of its
    /// creation, so a collection deleted and created again under the same name never shares
    /// it. Writers that looked the collection up earlier pass it in
    /// [`PutOptions::incarnation`] to be sure they still write to the same one. 0 for
    /// collections created before the field existed (any later creation takes a clock value,
    /// which is at least 1).
    #[serde(default)]
    pub incarnation: u64,
}

/// Bytes of an item's text kept in its record. Records are read whole (listing, start-up), so a
/// long text lives only in the item's content file and the record keeps its beginning, cut at
/// a character boundary.
pub const MAX_RECORD_TEXT: usize = 4096;

/// `text` cut to at most [`MAX_RECORD_TEXT`] bytes at a character boundary, and whether it was.
pub(crate) fn record_text(text: Option<String>) -> (Option<String>, bool) {
    match text {
        Some(mut t) if t.len() > MAX_RECORD_TEXT => {
            let mut end = MAX_RECORD_TEXT;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
            (Some(t), true)
        }
        t => (t, false),
    }
}

/// A stored item, without its vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// User-supplied or generated id, unique within the collection.
    pub id: String,
    /// Internal numeric id for the index; unique within the collection, never reused (a
    /// replaced item gets a new one).
    pub seq: u64,
    /// e.g. `image`, `text`, `audio`.
    pub modality: String,
    /// Lowercase hex SHA-256 of the original bytes, when original bytes were stored.
    pub content_hash: Option<String>,
    /// Media type declared by the client, if any. Never used to build a path.
    pub content_type: Option<String>,
    /// Length of the original bytes (0 when none were stored).
    pub content_len: u64,
    /// The text, for text items: at most [`MAX_RECORD_TEXT`] bytes of it (the whole text is
    /// the content file).
    pub text: Option<String>,
    /// Whether `text` was cut to [`MAX_RECORD_TEXT`] bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
    /// A JSON object owned by the client.
    pub metadata: serde_json::Value,
    pub model: String,
    pub weights_hash: String,
    pub preprocess_version: String,
    /// Unix time in milliseconds.
    pub created_at: u64,
}

/// The original bytes of a new item: in memory, or in a file that the caller keeps unchanged
/// until the put returns (the store hard-links it into place where it can, else copies it).
#[derive(Clone, Debug, PartialEq)]
pub enum NewContent {
    Bytes(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

impl NewContent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            NewContent::Bytes(b) => b.len() as u64,
            NewContent::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lowercase hex SHA-256 of the content; a file is read in pieces, and one whose length is
    /// not the one given is refused (it changed after it was handed over).
    pub(crate) fn sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        match self {
            NewContent::Bytes(b) => Ok(sha256_hex(b)),
            NewContent::File { path, len } => {
                let io_err = |e| StoreError::io(format!("reading {}", path.display()), e);
                let mut f = std::fs::File::open(path).map_err(io_err)?;
                let mut hasher = Sha256::new();
                let n = std::io::copy(&mut f, &mut hasher).map_err(io_err)?;
                if n != *len {
                    return Err(StoreError::invalid(
                        "content",
                        format!("the file holds {n} bytes, {len} were announced"),
                    ));
                }
                Ok(hex(&hasher.finalize()))
            }
        }
    }
}

impl From<Vec<u8>> for NewContent {
    fn from(b: Vec<u8>) -> Self {
        NewContent::Bytes(b)
    }
}

/// An item to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewItem {
    /// Explicit id, or `None` to have one generated.
    pub id: Option<String>,
    pub modality: String,
    /// Original bytes; stored as a content-addressed file and used for deduplication. Items
    /// without content are never deduplicated (pass a text's UTF-8 bytes here to deduplicate
    /// texts).
    pub content: Option<NewContent>,
    pub content_type: Option<String>,
    pub text: Option<String>,
    /// Must be a JSON object (use `json!({})` for none).
    pub metadata: serde_json::Value,
    /// Must equal the collection's model.
    pub model: String,
    pub weights_hash: String,
    pub preprocess_version: String,
    /// Must have the collection's dimension and only finite values.
    pub vector: Vec<f32>,
}

/// What to do when an explicit id already exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExistingId {
    /// Fail the whole batch with [`StoreError::Conflict`].
    #[default]
    Error,
    /// Replace the stored item (it gets a new sequence number).
    Replace,
}

/// Options of [`Store::put_items`](super::Store::put_items).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOptions {
    pub on_existing_id: OnExistingId,
    /// When true (the default), an item whose content hash is already stored in the collection
    /// (or earlier in the same batch) is not stored and is reported as a duplicate of the
    /// existing item. When false, the item is stored and shares the content file.
    pub dedupe: bool,
    /// When set, the put fails with [`StoreError::CollectionNotFound`], writing nothing, unless
    /// the collection's [`CollectionRecord::incarnation`] is this value. It is compared under
    /// the store's write lock, so a caller that looked the collection up before a long
    /// preparation (embedding) cannot write into a collection deleted and created again under
    /// the same name meanwhile.
    pub incarnation: Option<u64>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            on_existing_id: OnExistingId::Error,
            dedupe: true,
            incarnation: None,
        }
    }
}

/// Per-item result of a put, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored as a new item.
    Inserted { id: String, seq: u64 },
    /// Replaced the item of the same id; `old_seq` is no longer live.
    Replaced { id: String, seq: u64, old_seq: u64 },
    /// Not stored: the same content is already stored as item `id`.
    Duplicate { id: String, seq: u64 },
}

impl PutOutcome {
    /// Id of the item now holding this input.
    pub fn id(&self) -> &str {
        match self {
            PutOutcome::Inserted { id, .. }
            | PutOutcome::Replaced { id, .. }
            | PutOutcome::Duplicate { id, .. } => id,
        }
    }

    /// Sequence number of the item now holding this input.
    pub fn seq(&self) -> u64 {
        match self {
            PutOutcome::Inserted { seq, .. }
            | PutOutcome::Replaced { seq, .. }
            | PutOutcome::Duplicate { seq, .. } => *seq,
        }
    }
}

/// Result of a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReport {
    /// One outcome per input item, in input order.
    pub outcomes: Vec<PutOutcome>,
    /// The collection's generation after the call.
    pub generation: u64,
}

/// One page of [`Store::list_items`](super::Store::list_items).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemPage {
    pub items: Vec<ItemRecord>,
    /// Pass back to get the next page; `None` when this page reached the end.
    pub next_cursor: Option<String>,
}

/// Per-modality item counts of a collection.
pub type ModalityCounts = BTreeMap<String, u64>;

/// What [`Store::gc_blobs`](super::Store::gc_blobs) removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Content files no record references.
    pub orphan_files: u64,
    /// Interrupted temporary files.
    pub temp_files: u64,
    /// Directories of collections that no longer exist.
    pub stale_collection_dirs: u64,
}

pub(crate) fn validate_collection_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_COLLECTION_NAME_LEN {
        return Err(StoreError::invalid(
            "collection name",
            format!("must be 1-{MAX_COLLECTION_NAME_LEN} characters long"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(StoreError::invalid(
            "collection name",
            "only A-Z, a-z, 0-9, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// Checks the id of a new item: 1-[`MAX_ITEM_ID_LEN`] bytes of UTF-8, no control characters
/// or '/', and not `.` or `..`, which clients resolve as path segments in the item's URLs
/// (`/items/./content` is `/items/content`, another item).
pub(crate) fn validate_new_item_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ITEM_ID_LEN {
        return Err(StoreError::invalid(
            "item id",
            format!("must be 1-{MAX_ITEM_ID_LEN} bytes long (UTF-8)"),
        ));
    }
    if id == "." || id == ".." {
        return Err(StoreError::invalid(
            "item id",
            "`.` and `..` are not allowed (URLs resolve them as path segments)",
        ));
    }
    validate_id_chars(id)
}

/// Checks an id used to find a stored item. Looser than [`validate_new_item_id`] (up to
/// [`MAX_ITEM_ID_LEN`] characters, `.` and `..` allowed, as earlier versions stored them) so
/// that items stored before the stricter rule can still be read and deleted.
pub(crate) fn validate_item_id(id: &str) -> Result<()> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ITEM_ID_LEN {
        return Err(StoreError::invalid(
            "item id",
            format!("must be 1-{MAX_ITEM_ID_LEN} bytes long (UTF-8)"),
        ));
    }
    validate_id_chars(id)
}

fn validate_id_chars(id: &str) -> Result<()> {
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(StoreError::invalid(
            "item id",
            "control characters and '/' are not allowed",
        ));
    }
    Ok(())
}

pub(crate) fn validate_modality(m: &str) -> Result<()> {
    if m.is_empty()
        || m.len() > MAX_MODALITY_LEN
        || !m
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::invalid(
            "modality",
            format!("must be 1-{MAX_MODALITY_LEN} characters of [a-z0-9_]"),
        ));
    }
    Ok(())
}

/// Short free-form labels: no control characters, bounded length.
pub(crate) fn validate_label(field: &'static str, s: &str, allow_empty: bool) -> Result<()> {
    if (!allow_empty && s.is_empty()) || s.len() > MAX_LABEL_LEN {
        let min = if allow_empty { 0 } else { 1 };
        return Err(StoreError::invalid(
            field,
            format!("must be {min}-{MAX_LABEL_LEN} bytes long"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

pub(crate) fn validate_new_collection(c: &NewCollection) -> Result<()> {
    validate_collection_name(&c.name)?;
    validate_label("model", &c.model, false)?;
    if c.dim == 0 || c.dim > MAX_DIM {
        return Err(StoreError::invalid("dim", format!("must be 1..={MAX_DIM}")));
    }
    let p = c.index;
    if p.m == 0 || p.ef_construction == 0 || p.ef_search == 0 {
        return Err(StoreError::invalid(
            "index params",
            "m, ef_construction and ef_search must be positive",
        ));
    }
    for t in &c.auto_tags {
        validate_label("auto tag", t, false)?;
    }
    Ok(())
}

/// Checks everything about one new item that does not depend on stored state.
pub(crate) fn validate_new_item(coll: &CollectionRecord, item: &NewItem) -> Result<()> {
    if let Some(id) = &item.id {
        validate_new_item_id(id)?;
    }
    validate_modality(&item.modality)?;
    if let Some(ct) = &item.content_type {
        validate_label("content type", ct, false)?;
    }
    if !item.metadata.is_object() {
        return Err(StoreError::invalid("metadata", "must be a JSON object"));
    }
    if item.model != coll.model {
        return Err(StoreError::invalid(
            "model",
            format!(
                "item model `{}` differs from the collection's model `{}`",
                item.model, coll.model
            ),
        ));
    }
    validate_label("weights hash", &item.weights_hash, true)?;
    validate_label("preprocess version", &item.preprocess_version, true)?;
    if item.vector.len() != coll.dim as usize {
        return Err(StoreError::invalid(
            "vector",
            format!(
                "has {} dimensions, the collection has {}",
                item.vector.len(),
                coll.dim
            ),
        ));
    }
    if item.vector.iter().any(|x| !x.is_finite()) {
        return Err(StoreError::invalid(
            "vector",
            "contains NaN or infinite values",
        ));
    }
    Ok(())
}

/// Checks that a string is a lowercase hex SHA-256 (and therefore safe as a file name).
pub(crate) fn validate_hash(hash: &str) -> Result<()> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "content hash",
            "must be 64 lowercase hex digits",
        ))
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Little-endian f32 bytes, the stored form of a vector.
pub(crate) fn encode_vector(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub(crate) fn decode_vector(bytes: &[u8], dim: u32) -> Result<Vec<f32>> {
    if bytes.len() != dim as usize * 4 {
        return Err(StoreError::corrupt(
            "vectors",
            format!(
                "vector of {} bytes in a collection of dimension {dim}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
