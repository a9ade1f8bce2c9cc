//! Requests and answers of the engine: what the API layer sends in and renders out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::embed::{Media, Modality};

/// HNSW parameters a collection may set at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswParams {
    pub m: Option<usize>,
    pub ef_construction: Option<usize>,
    pub ef_search: Option<usize>,
}

/// `POST /v1/collections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    pub name: String,
    /// Name of a loaded model; the collection is bound to it for life.
    pub model: String,
    #[serde(default)]
    pub hnsw: Option<HnswParams>,
    /// Labels every upload is zero-shot classified against; its top labels are stored in the
    /// item's metadata under `tags`.
    #[serde(default)]
    pub auto_tags: Vec<String>,
}

/// State of a collection's index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexState {
    /// `hnsw` or `flat`.
    pub kind: String,
    /// Live vectors in the index.
    pub len: usize,
    /// `ready`, or `rebuilding` while a background rebuild runs.
    pub state: String,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

/// What `GET /v1/collections/{name}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub model: String,
    pub dim: usize,
    /// Items per modality.
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
    pub index: IndexState,
    pub auto_tags: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// The payload of one new item.
#[derive(Debug, Clone)]
pub enum Content {
    Text(String),
    /// An uploaded file; its modality is detected from the bytes unless given.
    File {
        bytes: Media,
        modality: Option<Modality>,
    },
    /// A precomputed vector in the collection's space.
    Vector(Vec<f32>),
}

/// One item of an upload.
#[derive(Debug, Clone)]
pub struct NewInput {
    pub id: Option<String>,
    pub content: Content,
    /// A JSON object (or null).
    pub metadata: serde_json::Value,
}

/// Per-item answer of an upload, in input order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemStatus {
    pub id: String,
    pub modality: String,
    /// `created`, `replaced` or `duplicate` (same content already stored, under `id`).
    pub status: String,
}

/// An item as shown by the API.
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub id: String,
    pub modality: String,
    pub metadata: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether `text` is only the beginning of the text (see [`crate::store::MAX_RECORD_TEXT`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub content_len: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
    pub model: String,
    pub weights_sha256: String,
    pub preprocess_version: String,
    pub created_at: u64,
}

/// One page of items.
#[derive(Debug, Clone, Serialize)]
pub struct ItemList {
    pub items: Vec<ItemView>,
    pub next_cursor: Option<String>,
}

/// A query term.
#[derive(Debug, Clone)]
pub enum QueryTerm {
    Text(String),
    Vector(Vec<f32>),
    /// The stored vector of an existing item.
    Item(String),
    File {
        bytes: Media,
        modality: Option<Modality>,
    },
}

/// A search: the normalised weighted sum of the terms' embeddings is the query vector.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub terms: Vec<(QueryTerm, f32)>,
    pub k: usize,
    pub offset: usize,
    pub filter: Option<Filter>,
    pub min_score: Option<f32>,
    /// Exact scan instead of the graph.
    pub exact: bool,
    pub ef_search: Option<usize>,
}

/// Restricts results; applied inside the graph search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Allowed result modalities.
    #[serde(default)]
    pub modality: Option<Vec<Modality>>,
    /// Conditions on metadata keys, all of which must hold: a plain JSON value means equality,
    /// `{"in": [..]}` membership, `{"gt"|"gte"|"lt"|"lte": number}` numeric ranges.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// One search result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    pub modality: String,
    pub metadata: serde_json::Value,
}

/// A zero-shot classification answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
}

/// Where the original bytes of an item are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemContent {
    /// A stored original: its content file (which a delete may remove at any time), its type
    /// as detected at upload, and its SHA-256 (lowercase hex).
    File {
        path: std::path::PathBuf,
        content_type: String,
        sha256: String,
    },
    /// The text of a text item stored without a content file.
    Text(String),
}
