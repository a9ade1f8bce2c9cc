//! Collections: each binds one model (one embedding space) to its items in the store and its
//! vectors in an index. This layer owns uploads (detect, embed, store, index), searches
//! (weighted query terms, filters applied inside the graph search), zero-shot classification,
//! and keeping index and store in agreement across restarts. It never imports axum: the API
//! layer turns [`EngineError`] into HTTP answers in one place.

pub mod filter;
pub mod metadata;
pub mod types;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::{IndexSettings, MetadataSettings, Settings};
use crate::embed::registry::Registry;
use crate::embed::{DecodeBudget, EmbedError, Encoder, Input, Media, Modality, ModelInfo};
use crate::index::{self, Index, IndexConfig, IndexError, SearchParams};
use crate::ingest::{detect, EmbedQueue, QueueFull, Spool, SpoolQuota};
use crate::store::{
    CollectionRecord, IndexParams, ItemRecord, NewCollection, NewContent, NewItem, PutOptions,
    PutOutcome, SledStore, Store, StoreError,
};

pub use filter::{validate_filter, Matcher};
pub use types::*;

/// Largest `k` a search may ask for.
pub const MAX_K: usize = 1000;
/// Bytes of a file read to recognise a binary format.
const DETECT_HEAD: usize = 4096;
/// Largest `offset` of a search.
pub const MAX_OFFSET: usize = 10_000;
/// Most items in one upload request.
pub const MAX_UPLOAD_ITEMS: usize = 1024;
/// Most labels in a classification or `auto_tags`.
pub const MAX_LABELS: usize = 256;
/// Labels stored per item by `auto_tags`.
pub const AUTO_TAGS_TOP: usize = 3;
/// CLIP's trained logit scale (exp of the learned temperature, clamped at 100).
pub const LOGIT_SCALE: f32 = 100.0;

/// Errors of the engine, each with a stable code the API reports.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    #[error("collection `{0}` already exists")]
    CollectionExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{0}")]
    UnsupportedMedia(String),
    /// A limit on the size of what a request asks the server to keep (metadata).
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Overloaded(#[from] QueueFull),
    /// The decode-memory budget shared by all requests is in use.
    #[error("{0}")]
    Busy(String),
    #[error("storage error: {0}")]
    Store(StoreError),
    #[error("index error: {0}")]
    Index(IndexError),
    #[error("encoder error: {0}")]
    Embed(EmbedError),
}

impl EngineError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound {
                what: "collection", ..
            } => "collection_not_found",
            EngineError::NotFound { what: "model", .. } => "model_not_found",
            EngineError::NotFound {
                what: "content", ..
            } => "content_not_found",
            EngineError::NotFound { .. } => "item_not_found",
            EngineError::CollectionExists(_) => "collection_exists",
            EngineError::Conflict(_) => "conflict",
            EngineError::Invalid { code, .. } => code,
            EngineError::UnsupportedMedia(_) => "unsupported_media_type",
            EngineError::TooLarge(_) => "payload_too_large",
            EngineError::Overloaded(_) | EngineError::Busy(_) => "overloaded",
            EngineError::Store(_) => "storage_error",
            EngineError::Index(_) => "index_error",
            EngineError::Embed(_) => "encoder_error",
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CollectionNotFound(name) => EngineError::NotFound {
                what: "collection",
                name,
            },
            StoreError::ItemNotFound { id, .. } => EngineError::NotFound {
                what: "item",
                name: id,
            },
            StoreError::CollectionExists(name) => EngineError::CollectionExists(name),
            StoreError::Conflict { .. } => EngineError::Conflict(e.to_string()),
            StoreError::Invalid { .. } => EngineError::invalid("invalid_request", e.to_string()),
            other => EngineError::Store(other),
        }
    }
}

impl From<IndexError> for EngineError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::DimensionMismatch { .. } => {
                EngineError::invalid("wrong_dimension", e.to_string())
            }
            IndexError::NonFinite { .. } => {
                EngineError::invalid("non_finite_vector", e.to_string())
            }
            IndexError::ZeroVector => EngineError::invalid("zero_vector", e.to_string()),
            other => EngineError::Index(other),
        }
    }
}

impl From<EmbedError> for EngineError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::UnsupportedFormat(_) => EngineError::UnsupportedMedia(e.to_string()),
            EmbedError::UnsupportedModality { .. } => {
                EngineError::invalid("unsupported_modality", e.to_string())
            }
            EmbedError::UnknownModality(_) => {
                EngineError::invalid("unknown_modality", e.to_string())
            }
            EmbedError::InvalidInput(_) | EmbedError::Decode(_) => {
                EngineError::invalid("invalid_media", e.to_string())
            }
            EmbedError::Busy(m) => EngineError::Busy(m),
            other => EngineError::Embed(other),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What a search filter looks at, kept in memory per item so filters run inside the graph walk.
#[derive(Debug, Clone)]
struct Payload {
    id: String,
    modality: String,
    metadata: serde_json::Value,
}

struct Collection {
    record: CollectionRecord,
    encoder: Arc<dyn Encoder>,
    index: Arc<dyn Index>,
    payloads: RwLock<HashMap<u64, Arc<Payload>>>,
    labels: RwLock<Option<Arc<Vec<Vec<f32>>>>>,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub embed_batches: AtomicU64,
    pub embed_items: AtomicU64,
    pub embed_micros: AtomicU64,
    pub searches: AtomicU64,
    pub search_micros: AtomicU64,
}

/// The collections of one data directory.
pub struct Engine {
    store: Arc<SledStore>,
    registry: Registry,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    index_root: PathBuf,
    index_defaults: IndexSettings,
    metadata_limits: MetadataSettings,
    queue: EmbedQueue,
    /// Memory the decoding of uploaded files may hold, shared by every request.
    decode: DecodeBudget,
    /// Where uploaded files are received (`<data_dir>/spool`).
    spool: Spool,
    stats: EngineStats,
    /// Serialises writes per engine so store commits and index updates happen in one order.
    write_lock: tokio::sync::Mutex<()>,
}

fn now_micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

impl Engine {
    /// Opens the store under `settings.server.data_dir`, binds every collection to its model and
    /// loads (or rebuilds from the store) its index.
    pub fn open(settings: &Settings, registry: Registry) -> Result<Self> {
        let data_dir = &settings.server.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            EngineError::Store(StoreError::Io {
                context: format!("creating {}", data_dir.display()),
                source: e,
            })
        })?;
        let store = Arc::new(SledStore::open(data_dir)?);
        let spool_dir = data_dir.join("spool");
        let quota = SpoolQuota {
            per_owner: settings.server.spool_per_client,
            total: settings.server.spool_total,
        };
        let spool = Spool::open(&spool_dir, quota).map_err(|e| {
            EngineError::Store(StoreError::Io {
                context: format!("opening the upload spool {}", spool_dir.display()),
                source: e,
            })
        })?;
        let engine = Engine {
            store,
            registry,
            collections: RwLock::new(HashMap::new()),
            index_root: data_dir.join("index"),
            index_defaults: settings.index.clone(),
            metadata_limits: settings.metadata,
            queue: EmbedQueue::new(settings.embed.queue_capacity, settings.embed.workers),
            decode: DecodeBudget::new(settings.embed.decode_limits()),
            spool,
            stats: EngineStats::default(),
            write_lock: tokio::sync::Mutex::new(()),
        };
        for record in engine.store.list_collections()? {
            let Some(encoder) = engine.registry.get(&record.model).cloned() else {
                tracing::warn!(
                    collection = %record.name,
                    model = %record.model,
                    "model of this collection is not loaded; the collection is unavailable"
                );
                continue;
            };
            let t = Instant::now();
            let coll = engine.load_collection(record, encoder)?;
            tracing::info!(
                collection = %coll.record.name,
                items = coll.index.len(),
                ms = t.elapsed().as_millis() as u64,
                "collection opened"
            );
            engine
                .collections
                .write()
                .expect("lock")
                .insert(coll.record.name.clone(), Arc::new(coll));
        }
        Ok(engine)
    }

    fn index_config(&self, p: &IndexParams) -> IndexConfig {
        IndexConfig {
            m: p.m as usize,
            ef_construction: p.ef_construction as usize,
            ef_search: p.ef_search as usize,
            exact_threshold: self.index_defaults.exact_threshold,
            ..IndexConfig::default()
        }
    }

    fn empty_index(&self, record: &CollectionRecord, cfg: &IndexConfig) -> Result<Arc<dyn Index>> {
        Ok(Arc::from(index::new_index(
            self.index_defaults.kind,
            record.dim as usize,
            cfg,
        )?))
    }

    fn index_dir(&self, name: &str) -> PathBuf {
        self.index_root.join(name)
    }

    fn load_collection(
        &self,
        record: CollectionRecord,
        encoder: Arc<dyn Encoder>,
    ) -> Result<Collection> {
        let cfg = self.index_config(&record.index);
        let dir = self.index_dir(&record.name);
        let generation = record.generation;
        // A dump at the store's generation is used as it is. A stale one (the process stopped
        // before its next save, say after a crash) is caught up with the store, which costs a
        // pass over the stored vectors plus the changed items; only a missing or unreadable
        // dump means building the graph from scratch.
        let (index, fresh): (Arc<dyn Index>, bool) = match dir
            .join("manifest.json")
            .exists()
            .then(|| index::load(&dir, &cfg))
        {
            Some(Ok(l))
                if l.index.dim() == record.dim as usize
                    && l.index.kind() == self.index_defaults.kind =>
            {
                (Arc::from(l.index), l.stamp == generation)
            }
            Some(Ok(l)) if l.index.kind() != self.index_defaults.kind => {
                tracing::info!(collection = %record.name, dump = %l.index.kind(), configured = %self.index_defaults.kind, "index dump of another kind; rebuilding from the store");
                (self.empty_index(&record, &cfg)?, false)
            }
            Some(Ok(l)) => {
                tracing::warn!(collection = %record.name, dim = l.index.dim(), "index dump has another dimension; rebuilding from the store");
                (self.empty_index(&record, &cfg)?, false)
            }
            Some(Err(e)) => {
                tracing::warn!(collection = %record.name, error = %e, "index dump unreadable; rebuilding from the store");
                (self.empty_index(&record, &cfg)?, false)
            }
            None => (self.empty_index(&record, &cfg)?, false),
        };
        if !fresh {
            let t = Instant::now();
            let vectors = self.store.vectors(&record.name)?;
            let report = index::catch_up::<EngineError>(
                &*index,
                vectors.map(|v| v.map_err(EngineError::from)),
            )?;
            tracing::info!(
                collection = %record.name,
                kept = report.kept,
                inserted = report.inserted,
                deleted = report.deleted,
                ms = t.elapsed().as_millis() as u64,
                "index caught up with the store"
            );
        }
        let mut payloads = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let page =
                self.store
                    .list_items(&record.name, crate::store::MAX_PAGE, cursor.as_deref())?;
            for item in page.items {
                payloads.insert(item.seq, Arc::new(payload_of(&item)));
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(Collection {
            record,
            encoder,
            index,
            payloads: RwLock::new(payloads),
            labels: RwLock::new(None),
        })
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        if let Some(c) = self.collections.read().expect("lock").get(name) {
            return Ok(c.clone());
        }
        // Present in the store but its model is not loaded?
        match self.store.get_collection(name) {
            Ok(r) => Err(EngineError::invalid(
                "model_not_loaded",
                format!(
                    "collection `{name}` needs model `{}`, which is not loaded",
                    r.model
                ),
            )),
            Err(_) => Err(EngineError::NotFound {
                what: "collection",
                name: name.to_string(),
            }),
        }
    }

    /// The loaded models.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.registry.iter().map(|e| e.info().clone()).collect()
    }

    fn encoder(&self, model: &str) -> Result<Arc<dyn Encoder>> {
        self.registry
            .get(model)
            .cloned()
            .ok_or_else(|| EngineError::NotFound {
                what: "model",
                name: model.to_string(),
            })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn queue(&self) -> &EmbedQueue {
        &self.queue
    }

    /// The limits on items' metadata (`[metadata]` of the configuration).
    pub fn metadata_limits(&self) -> &MetadataSettings {
        &self.metadata_limits
    }

    /// Items in all indexes.
    pub fn indexed_items(&self) -> usize {
        self.collections
            .read()
            .expect("lock")
            .values()
            .map(|c| c.index.len())
            .sum()
    }

    pub fn create_collection(&self, req: CreateCollection) -> Result<CollectionInfo> {
        let encoder = self.encoder(&req.model)?;
        if req.auto_tags.len() > MAX_LABELS {
            return Err(EngineError::invalid(
                "invalid_request",
                format!("at most {MAX_LABELS} auto_tags"),
            ));
        }
        let h = req.hnsw.unwrap_or(HnswParams {
            m: None,
            ef_construction: None,
            ef_search: None,
        });
        let (m, ef_construction, ef_search) = (
            h.m.unwrap_or(self.index_defaults.m),
            h.ef_construction
                .unwrap_or(self.index_defaults.ef_construction),
            h.ef_search.unwrap_or(self.index_defaults.ef_search),
        );
        // Checked as given, before narrowing to the store's 32-bit fields: a value above 2^32
        // must be refused, not wrapped into range.
        let invalid = |e: IndexError| EngineError::invalid("invalid_request", e.to_string());
        index::validate_hnsw_params(m, ef_construction, ef_search).map_err(invalid)?;
        let narrow = |v: usize| {
            u32::try_from(v).map_err(|_| EngineError::invalid("invalid_request", "out of range"))
        };
        let params = IndexParams {
            m: narrow(m)?,
            ef_construction: narrow(ef_construction)?,
            ef_search: narrow(ef_search)?,
        };
        self.index_config(&params).validate().map_err(invalid)?;
        let record = self.store.create_collection(NewCollection {
            name: req.name.clone(),
            model: req.model.clone(),
            dim: encoder.dim() as u32,
            index: params,
            auto_tags: req.auto_tags,
        })?;
        let _ = std::fs::remove_dir_all(self.index_dir(&record.name));
        let coll = self.load_collection(record, encoder)?;
        let info = self.info_of(&coll)?;
        self.collections
            .write()
            .expect("lock")
            .insert(coll.record.name.clone(), Arc::new(coll));
        Ok(info)
    }

    fn info_of(&self, c: &Collection) -> Result<CollectionInfo> {
        let counts = self.store.modality_counts(&c.record.name)?;
        let total = counts.values().sum();
        let p = &c.record.index;
        Ok(CollectionInfo {
            name: c.record.name.clone(),
            model: c.record.model.clone(),
            dim: c.record.dim as usize,
            counts,
            total,
            index: IndexState {
                kind: c.index.kind().to_string(),
                len: c.index.len(),
                state: if c.index.needs_rebuild() {
                    "rebuild_pending"
                } else {
                    "ready"
                }
                .into(),
                m: p.m as usize,
                ef_construction: p.ef_construction as usize,
                ef_search: p.ef_search as usize,
            },
            auto_tags: c.record.auto_tags.clone(),
            created_at: c.record.created_at,
        })
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>> {
        let mut names: Vec<String> = self
            .collections
            .read()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names.iter().map(|n| self.get_collection(n)).collect()
    }

    pub fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        self.info_of(&*self.collection(name)?)
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let store = self.store.clone();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || store.delete_collection(&n))
            .await
            .expect("store task")?;
        self.collections.write().expect("lock").remove(name);
        let _ = std::fs::remove_dir_all(self.index_dir(name));
        Ok(())
    }

    /// Embeds inputs through the bounded queue, one forward pass per modality.
    /// A failing input's error names it as `item {positions[i]}` when `positions` is given (the
    /// inputs' places in the caller's request); single-input callers pass `None`.
    async fn embed_inputs(
        &self,
        encoder: Arc<dyn Encoder>,
        inputs: Vec<Input>,
        positions: Option<&[usize]>,
    ) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let n = inputs.len() as u64;
        let t = Instant::now();
        let budget = self.decode.clone();
        let results = self
            .queue
            .run(move || encoder.embed_batch_within(&inputs, &budget))
            .await??;
        self.stats.embed_batches.fetch_add(1, Ordering::Relaxed);
        self.stats.embed_items.fetch_add(n, Ordering::Relaxed);
        self.stats
            .embed_micros
            .fetch_add(now_micros(t), Ordering::Relaxed);
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.map_err(|e| match positions {
                    Some(p) => prefix_item(EngineError::from(e), p[i]),
                    None => EngineError::from(e),
                })
            })
            .collect()
    }

    /// Resolves what an uploaded or queried file is, and checks the model accepts it.
    fn file_input(
        encoder: &dyn Encoder,
        bytes: Media,
        modality: Option<Modality>,
    ) -> Result<(Input, &'static str)> {
        if bytes.is_empty() {
            return Err(EngineError::invalid("empty_file", "the file is empty"));
        }
        // Binary formats are told by their first bytes; text needs the whole file (UTF-8 and no
        // control characters throughout), so only a file whose beginning could be text, or was
        // cut inside a character, is read in full here.
        // A spooled file read in full for that is kept, so a text is not read from disk twice.
        let head = bytes.head(DETECT_HEAD)?;
        let mut read_whole: Option<Vec<u8>> = None;
        let detected = match detect(&head) {
            Some(d) if d.modality != Some(Modality::Text) => Some(d),
            d if bytes.len() <= head.len() as u64 => d,
            _ => match bytes.load()? {
                Cow::Borrowed(b) => detect(b),
                Cow::Owned(v) => detect(read_whole.insert(v)),
            },
        };
        let detected = detected.ok_or_else(|| {
            EngineError::UnsupportedMedia(
                "unrecognised file format (detected from its bytes); supported: JPEG, PNG, WebP, GIF images, \
                 UTF-8 text"
                    .into(),
            )
        })?;
        let modality = match (modality, detected.modality) {
            (Some(m), _) => m,
            (None, Some(m)) => m,
            (None, None) => {
                return Err(EngineError::invalid(
                    "modality_required",
                    format!(
                        "a {} file can hold several modalities: give `modality`",
                        detected.content_type
                    ),
                ))
            }
        };
        if !encoder.modalities().contains(&modality) {
            return Err(EngineError::invalid(
                "unsupported_modality",
                format!(
                    "model `{}` does not accept {modality} input (it accepts: {})",
                    encoder.name(),
                    encoder
                        .modalities()
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let input = if modality == Modality::Text {
            Input::Text(
                String::from_utf8(match read_whole {
                    Some(v) => v,
                    None => bytes.into_vec()?,
                })
                .map_err(|_| EngineError::invalid("invalid_media", "text is not UTF-8"))?,
            )
        } else {
            Input::Bytes { modality, bytes }
        };
        Ok((input, detected.content_type))
    }

    /// Where uploaded files are received.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Adds items: all or nothing. Every item is validated and embedded before anything is
    /// stored; the store commit is flushed to disk before this returns.
    pub async fn add_items(&self, name: &str, items: Vec<NewInput>) -> Result<Vec<ItemStatus>> {
        let coll = self.collection(name)?;
        if items.is_empty() {
            return Err(EngineError::invalid("invalid_request", "no items given"));
        }
        if items.len() > MAX_UPLOAD_ITEMS {
            return Err(EngineError::invalid(
                "invalid_request",
                format!("at most {MAX_UPLOAD_ITEMS} items per request"),
            ));
        }
        let enc = coll.encoder.clone();
        let dim = coll.record.dim as usize;
        // Decide each item's modality and what to embed.
        struct Prepared {
            id: Option<String>,
            modality: Modality,
            metadata: serde_json::Value,
            content: Option<(Media, &'static str)>,
            text: Option<String>,
            vector: Option<Vec<f32>>,
        }
        let mut prepared = Vec::with_capacity(items.len());
        let mut to_embed = Vec::new();
        let mut embed_slots = Vec::new();
        let mut budget = metadata::RequestBudget::new(&self.metadata_limits);
        for (i, item) in items.into_iter().enumerate() {
            let metadata = match item.metadata {
                serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                m @ serde_json::Value::Object(_) => m,
                _ => {
                    return Err(prefix_item(
                        EngineError::invalid("invalid_metadata", "metadata must be a JSON object"),
                        i,
                    ))
                }
            };
            // Before anything is embedded or stored: metadata is kept in memory for filters.
            metadata::check_item(&metadata, &self.metadata_limits, "metadata")
                .and_then(|n| budget.charge(n))
                .map_err(|e| prefix_item(e, i))?;
            let p = match item.content {
                Content::Vector(v) => {
                    // The same check as a query vector's: what is stored can be searched.
                    unit_vector(dim, &v, "vector").map_err(|e| prefix_item(e, i))?;
                    // A vector item has no content of its own; its modality is "vector".
                    Prepared {
                        id: item.id,
                        modality: Modality::Image,
                        metadata,
                        content: None,
                        text: None,
                        vector: Some(v),
                    }
                }
                Content::Text(t) => {
                    if !enc.modalities().contains(&Modality::Text) {
                        return Err(prefix_item(
                            EngineError::invalid(
                                "unsupported_modality",
                                format!("model `{}` does not accept text", enc.name()),
                            ),
                            i,
                        ));
                    }
                    to_embed.push(Input::Text(t.clone()));
                    embed_slots.push(i);
                    // Texts are content like files: content-addressed, so an identical text
                    // is reported as a duplicate instead of being stored twice.
                    Prepared {
                        id: item.id,
                        modality: Modality::Text,
                        metadata,
                        content: Some((
                            Media::Memory(t.clone().into_bytes()),
                            "text/plain; charset=utf-8",
                        )),
                        text: Some(t),
                        vector: None,
                    }
                }
                Content::File { bytes, modality } => {
                    let (input, ctype) = Self::file_input(&*enc, bytes.clone(), modality)
                        .map_err(|e| prefix_item(e, i))?;
                    let m = input.modality();
                    let text = match &input {
                        Input::Text(t) => Some(t.clone()),
                        _ => None,
                    };
                    to_embed.push(input);
                    embed_slots.push(i);
                    Prepared {
                        id: item.id,
                        modality: m,
                        metadata,
                        content: Some((bytes, ctype)),
                        text,
                        vector: None,
                    }
                }
            };
            prepared.push(p);
        }
        let is_vector: Vec<bool> = prepared.iter().map(|p| p.vector.is_some()).collect();
        let vectors = self
            .embed_inputs(enc.clone(), to_embed, Some(&embed_slots))
            .await?;
        for (slot, v) in embed_slots.iter().zip(vectors) {
            prepared[*slot].vector = Some(v);
        }
        // Zero-shot tags.
        if !coll.record.auto_tags.is_empty() {
            let labels = self.label_vectors(&coll).await?;
            for p in prepared.iter_mut() {
                let v = p.vector.as_ref().expect("embedded");
                let probs = softmax_scores(v, &labels);
                let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                let tags: Vec<String> = ranked
                    .iter()
                    .take(AUTO_TAGS_TOP)
                    .map(|(j, _)| coll.record.auto_tags[*j].clone())
                    .collect();
                if let serde_json::Value::Object(m) = &mut p.metadata {
                    m.insert("tags".into(), serde_json::json!(tags));
                }
            }
        }
        let info = enc.info();
        // Spooled files must outlive the store's put, which links or copies them into place.
        let mut spooled: Vec<Media> = Vec::new();
        let new_items: Vec<NewItem> = prepared
            .into_iter()
            .zip(&is_vector)
            .map(|(p, &vec_only)| NewItem {
                id: p.id,
                modality: if vec_only {
                    "vector".into()
                } else {
                    p.modality.as_str().into()
                },
                content_type: p.content.as_ref().map(|(_, t)| t.to_string()),
                content: p.content.map(|(m, _)| match m {
                    Media::Memory(b) => NewContent::Bytes(b),
                    Media::File { ref path, len } => {
                        let path = path.to_path_buf();
                        spooled.push(m);
                        NewContent::File { path, len }
                    }
                }),
                text: p.text,
                metadata: p.metadata,
                model: coll.record.model.clone(),
                weights_hash: info.weights_sha256.clone(),
                preprocess_version: info.preprocess_version.to_string(),
                vector: p.vector.expect("every item has a vector"),
            })
            .collect();
        let vectors: Vec<Vec<f32>> = new_items.iter().map(|i| i.vector.clone()).collect();
        let modalities: Vec<String> = new_items.iter().map(|i| i.modality.clone()).collect();
        let metadata: Vec<serde_json::Value> =
            new_items.iter().map(|i| i.metadata.clone()).collect();
        let _w = self.write_lock.lock().await;
        let store = self.store.clone();
        let cname = name.to_string();
        let coll2 = coll.clone();
        // The collection was looked up before embedding; the store writes only if it is still
        // that one, not another created under its name since (checked inside the store's
        // write, so nothing is stored into a collection this index does not serve).
        let opts = PutOptions {
            incarnation: Some(coll.record.incarnation),
            ..PutOptions::default()
        };
        // Store commit (flushed) and index update run on a blocking thread, never on the async
        // workers: both are disk- or CPU-bound.
        let statuses = tokio::task::spawn_blocking(move || -> Result<Vec<ItemStatus>> {
            let report = store.put_items(&cname, new_items, opts)?;
            drop(spooled);
            let mut statuses = Vec::with_capacity(report.outcomes.len());
            let mut fresh: Vec<(u64, &[f32])> = Vec::new();
            let mut fresh_payloads = Vec::new();
            for (i, outcome) in report.outcomes.iter().enumerate() {
                let status = match outcome {
                    PutOutcome::Inserted { .. } => "created",
                    PutOutcome::Replaced { old_seq, .. } => {
                        coll2.index.delete(*old_seq);
                        coll2.payloads.write().expect("lock").remove(old_seq);
                        "replaced"
                    }
                    PutOutcome::Duplicate { .. } => "duplicate",
                };
                if status != "duplicate" {
                    fresh.push((outcome.seq(), &vectors[i]));
                    let payload = Payload {
                        id: outcome.id().to_string(),
                        modality: modalities[i].clone(),
                        metadata: metadata[i].clone(),
                    };
                    fresh_payloads.push((outcome.seq(), Arc::new(payload)));
                }
                statuses.push(ItemStatus {
                    id: outcome.id().to_string(),
                    modality: modalities[i].clone(),
                    status: status.into(),
                });
            }
            // Acknowledged in the store from here on; should indexing fail, the next start
            // rebuilds the index from the store (its generation differs from the dump's).
            coll2.index.insert_batch(&fresh)?;
            coll2.payloads.write().expect("lock").extend(fresh_payloads);
            if coll2.index.needs_rebuild() {
                index::spawn_rebuild_if_needed(&coll2.index);
            }
            Ok(statuses)
        })
        .await
        .expect("store task")?;
        Ok(statuses)
    }

    async fn label_vectors(&self, coll: &Collection) -> Result<Arc<Vec<Vec<f32>>>> {
        if let Some(l) = coll.labels.read().expect("lock").clone() {
            return Ok(l);
        }
        let inputs = coll
            .record
            .auto_tags
            .iter()
            .map(|l| Input::Text(prompt(l, None)))
            .collect();
        let v = Arc::new(
            self.embed_inputs(coll.encoder.clone(), inputs, None)
                .await?,
        );
        *coll.labels.write().expect("lock") = Some(v.clone());
        Ok(v)
    }

    pub fn get_item(&self, name: &str, id: &str) -> Result<ItemView> {
        self.collection(name)?;
        Ok(view_of(self.store.get_item(name, id)?))
    }

    /// Where an item's original bytes are, for serving them without reading them whole.
    pub fn item_content_source(&self, name: &str, id: &str) -> Result<ItemContent> {
        self.collection(name)?;
        let item = self.store.get_item(name, id)?;
        match (item.content_hash, item.content_type) {
            (Some(hash), Some(content_type)) => Ok(ItemContent::File {
                path: self.store.content_path(name, &hash)?,
                content_type,
                sha256: hash,
            }),
            _ => match item.text {
                Some(t) => Ok(ItemContent::Text(t)),
                None => Err(EngineError::NotFound {
                    what: "content",
                    name: id.to_string(),
                }),
            },
        }
    }

    pub fn list_items(&self, name: &str, limit: usize, cursor: Option<&str>) -> Result<ItemList> {
        self.collection(name)?;
        let page = self.store.list_items(name, limit, cursor)?;
        Ok(ItemList {
            items: page.items.into_iter().map(view_of).collect(),
            next_cursor: page.next_cursor,
        })
    }

    pub async fn delete_item(&self, name: &str, id: &str) -> Result<()> {
        self.collection(name)?;
        let _w = self.write_lock.lock().await;
        // Looked up under the write lock, which deleting a collection also takes: the index
        // updated below is the one of the collection the store deletes from.
        let coll = self.collection(name)?;
        let store = self.store.clone();
        let (n, i) = (name.to_string(), id.to_string());
        let record = tokio::task::spawn_blocking(move || store.delete_item(&n, &i))
            .await
            .expect("store task")?;
        coll.index.delete(record.seq);
        coll.payloads.write().expect("lock").remove(&record.seq);
        if coll.index.needs_rebuild() {
            index::spawn_rebuild_if_needed(&coll.index);
        }
        Ok(())
    }

    /// Embeds one query term, as a unit vector.
    async fn term_vector(&self, coll: &Collection, term: QueryTerm) -> Result<Vec<f32>> {
        let dim = coll.record.dim as usize;
        match term {
            QueryTerm::Vector(v) => unit_vector(dim, &v, "query vector"),
            QueryTerm::Item(id) => {
                let item = self.store.get_item(&coll.record.name, &id)?;
                let v = self.store.get_vector(&coll.record.name, item.seq)?;
                unit_vector(dim, &v, "stored vector")
            }
            QueryTerm::Text(t) => {
                if !coll.encoder.modalities().contains(&Modality::Text) {
                    return Err(EngineError::invalid(
                        "unsupported_modality",
                        "this collection's model does not accept text",
                    ));
                }
                let v = self
                    .embed_inputs(coll.encoder.clone(), vec![Input::Text(t)], None)
                    .await?
                    .remove(0);
                unit_vector(dim, &v, "embedding")
            }
            QueryTerm::File { bytes, modality } => {
                let (input, _) = Self::file_input(&*coll.encoder, bytes, modality)?;
                let v = self
                    .embed_inputs(coll.encoder.clone(), vec![input], None)
                    .await?
                    .remove(0);
                unit_vector(dim, &v, "embedding")
            }
        }
    }

    /// Nearest neighbours of the normalised weighted sum of the query terms.
    pub async fn search(&self, name: &str, req: SearchRequest) -> Result<Vec<SearchHit>> {
        let coll = self.collection(name)?;
        if req.terms.is_empty() {
            return Err(EngineError::invalid(
                "invalid_query",
                "the query has no terms",
            ));
        }
        if req.k == 0 || req.k > MAX_K {
            return Err(EngineError::invalid(
                "invalid_request",
                format!("k must be in 1..={MAX_K}"),
            ));
        }
        if req.offset > MAX_OFFSET {
            return Err(EngineError::invalid(
                "invalid_request",
                format!("offset must be at most {MAX_OFFSET}"),
            ));
        }
        if req.min_score.is_some_and(|m| !m.is_finite()) {
            return Err(EngineError::invalid(
                "invalid_request",
                "min_score must be a finite number",
            ));
        }
        if let Some(ef) = req.ef_search {
            index::validate_ef_search(ef)
                .map_err(|e| EngineError::invalid("invalid_request", e.to_string()))?;
        }
        let matcher = match &req.filter {
            Some(f) => {
                Some(Matcher::new(f).map_err(|m| EngineError::invalid("invalid_filter", m))?)
            }
            None => None,
        };
        let t = Instant::now();
        // Summed and normalised in f64: large weights cannot overflow, and terms that cancel
        // out are told from a small but usable sum relative to the weights.
        let mut sum = vec![0f64; coll.record.dim as usize];
        let mut total_weight = 0f64;
        for (term, weight) in req.terms {
            if !weight.is_finite() {
                return Err(EngineError::invalid(
                    "invalid_query",
                    "weights must be finite",
                ));
            }
            let v = self.term_vector(&coll, term).await?;
            let w = f64::from(weight);
            total_weight += w.abs();
            sum.iter_mut()
                .zip(&v)
                .for_each(|(a, b)| *a += w * f64::from(*b));
        }
        let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm.is_nan() || norm <= 1e-6 * total_weight {
            return Err(EngineError::invalid(
                "invalid_query",
                "the weighted query terms cancel out (zero vector)",
            ));
        }
        let q: Vec<f32> = sum.iter().map(|x| (x / norm) as f32).collect();
        let params = SearchParams {
            ef_search: req.ef_search,
            exact: req.exact,
        };
        let want = req.k + req.offset;
        let coll2 = coll.clone();
        let hits = tokio::task::spawn_blocking(move || {
            let payloads = coll2.payloads.read().expect("lock");
            let filter_fn = |seq: u64| match (&matcher, payloads.get(&seq)) {
                (Some(m), Some(p)) => m.matches(&p.modality, &p.metadata),
                _ => false,
            };
            // Without a filter the index takes its unfiltered (faster) graph walk; hits whose
            // payload is missing are dropped below either way.
            let filter: Option<&dyn Fn(u64) -> bool> = match matcher {
                Some(_) => Some(&filter_fn),
                None => None,
            };
            let hits = coll2.index.search(&q, want, &params, filter)?;
            Ok::<_, EngineError>(
                hits.into_iter()
                    .filter_map(|h| payloads.get(&h.id).map(|p| (h.score, p.clone())))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .expect("search task")?;
        self.stats.searches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .search_micros
            .fetch_add(now_micros(t), Ordering::Relaxed);
        Ok(hits
            .into_iter()
            .skip(req.offset)
            .filter(|(s, _)| req.min_score.is_none_or(|m| *s >= m))
            .map(|(score, p)| SearchHit {
                id: p.id.clone(),
                score,
                modality: p.modality.clone(),
                metadata: p.metadata.clone(),
            })
            .collect())
    }

    /// The embedding of one input with a model (L2-normalised).
    pub async fn embed(
        &self,
        model: &str,
        term: QueryTerm,
    ) -> Result<(ModelInfo, Modality, Vec<f32>)> {
        let enc = self.encoder(model)?;
        let input = match term {
            QueryTerm::Text(t) => Input::Text(t),
            QueryTerm::File { bytes, modality } => Self::file_input(&*enc, bytes, modality)?.0,
            _ => {
                return Err(EngineError::invalid(
                    "invalid_request",
                    "embed takes a text or a file",
                ))
            }
        };
        let modality = input.modality();
        if !enc.modalities().contains(&modality) {
            return Err(EngineError::invalid(
                "unsupported_modality",
                format!("model `{model}` does not accept {modality}"),
            ));
        }
        let v = self
            .embed_inputs(enc.clone(), vec![input], None)
            .await?
            .remove(0);
        Ok((enc.info().clone(), modality, v))
    }

    /// Zero-shot classification: probabilities of `labels` (softmax over scaled cosines),
    /// labels embedded through `template` (`{}` is replaced by the label).
    pub async fn classify(
        &self,
        model: &str,
        term: QueryTerm,
        labels: Vec<String>,
        template: Option<String>,
    ) -> Result<Vec<LabelScore>> {
        if labels.is_empty() || labels.len() > MAX_LABELS {
            return Err(EngineError::invalid(
                "invalid_request",
                format!("give 1 to {MAX_LABELS} labels"),
            ));
        }
        if let Some(t) = &template {
            if !t.contains("{}") {
                return Err(EngineError::invalid(
                    "invalid_request",
                    "template must contain `{}`",
                ));
            }
        }
        let (_, _, v) = self.embed(model, term).await?;
        let enc = self.encoder(model)?;
        let inputs = labels
            .iter()
            .map(|l| Input::Text(prompt(l, template.as_deref())))
            .collect();
        let label_vecs = self.embed_inputs(enc, inputs, None).await?;
        let probs = softmax_scores(&v, &label_vecs);
        let mut out: Vec<LabelScore> = labels
            .into_iter()
            .zip(probs)
            .map(|(label, probability)| LabelScore { label, probability })
            .collect();
        out.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Ok(out)
    }

    /// Writes every collection's index dump, stamped with the store's generation, so the next
    /// start loads instead of rebuilding.
    pub async fn persist_indexes(&self) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let colls: Vec<Arc<Collection>> = self
            .collections
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        for c in colls {
            let generation = self.store.generation(&c.record.name)?;
            let dir = self.index_dir(&c.record.name);
            let matches = index::read_dump_info(&dir)
                .map(|d| d.stamp == generation)
                .unwrap_or(false);
            if !matches {
                let index = c.index.clone();
                tokio::task::spawn_blocking(move || index.save(&dir, generation))
                    .await
                    .expect("index save task")?;
            }
        }
        Ok(())
    }

    /// Path of the data directory's index dumps.
    pub fn index_root(&self) -> &Path {
        &self.index_root
    }
}

fn payload_of(item: &ItemRecord) -> Payload {
    Payload {
        id: item.id.clone(),
        modality: item.modality.clone(),
        metadata: item.metadata.clone(),
    }
}

fn view_of(r: ItemRecord) -> ItemView {
    ItemView {
        id: r.id,
        modality: r.modality,
        metadata: r.metadata,
        text: r.text,
        text_truncated: r.text_truncated,
        content_type: r.content_type,
        content_len: r.content_len,
        content_sha256: r.content_hash,
        model: r.model,
        weights_sha256: r.weights_hash,
        preprocess_version: r.preprocess_version,
        created_at: r.created_at,
    }
}

/// The one check of a vector from a client, for storing and for searching alike: the
/// collection's dimension, finite components, and a norm that normalises to a unit vector
/// (computed in f64, so components near `f32::MAX` or subnormal ones work; only a zero vector
/// is refused). Returns the unit vector. `what` names the vector in messages.
pub fn unit_vector(dim: usize, v: &[f32], what: &str) -> Result<Vec<f32>> {
    if v.len() != dim {
        return Err(EngineError::invalid(
            "wrong_dimension",
            format!(
                "{what} has dimension {}, the collection expects {dim}",
                v.len()
            ),
        ));
    }
    index::normalised(dim, v).map_err(|e| match e {
        IndexError::NonFinite { position, .. } => EngineError::invalid(
            "non_finite_vector",
            format!("{what}: component {position} is NaN or infinite"),
        ),
        IndexError::ZeroVector => EngineError::invalid(
            "zero_vector",
            format!("{what} is all zeros: it has no direction to compare by cosine"),
        ),
        other => EngineError::from(other),
    })
}

fn prefix_item(e: EngineError, i: usize) -> EngineError {
    match e {
        EngineError::Invalid { code, message } => EngineError::Invalid {
            code,
            message: format!("item {i}: {message}"),
        },
        EngineError::TooLarge(m) => EngineError::TooLarge(format!("item {i}: {m}")),
        EngineError::UnsupportedMedia(m) => EngineError::UnsupportedMedia(format!("item {i}: {m}")),
        other => other,
    }
}

fn prompt(label: &str, template: Option<&str>) -> String {
    template
        .unwrap_or("a photo of a {}.")
        .replacen("{}", label, 1)
}

/// Softmax over `LOGIT_SCALE * cosine(v, label)`.
fn softmax_scores(v: &[f32], labels: &[Vec<f32>]) -> Vec<f32> {
    let logits: Vec<f32> = labels
        .iter()
        .map(|l| LOGIT_SCALE * l.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests;
