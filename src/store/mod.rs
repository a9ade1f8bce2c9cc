//! Durable storage of collections, items, vectors and original content.
//!
//! Owns: the data directory's `db/` (a sled database: collection and item records, vectors,
//! content-hash index, per-modality counters, format version) and `blobs/` (the original bytes
//! of items, one content-addressed file per distinct content per collection); the storage
//! format, its version number and the migrations between versions (`migrate.rs`, documented in
//! `migrations/` at the repository root).
//!
//! Does not own: embedding (the caller hands in finished vectors), nearest-neighbour search
//! (the index layer rebuilds from [`Store::vectors`] and uses [`Store::generation`] to tell
//! whether a saved index is stale), HTTP. This module never imports axum, `embed` or `index`.
//!
//! Guarantees:
//! - every mutating call flushes to disk before it returns `Ok`: an acknowledged write survives
//!   a crash (SIGKILL, power loss on a file system that honours fsync);
//! - a call's writes are atomic: a batch that fails validation, or a crash before the commit,
//!   leaves nothing visible;
//! - a content file is durable before the record that references it is committed, and is
//!   removed only after the last record referencing it is durably gone. Files orphaned by a
//!   crash are removed at open ([`Store::gc_blobs`]).

mod blobs;
mod error;
mod keys;
mod migrate;
mod model;
mod sled;

#[cfg(test)]
mod tests;

pub use self::error::{Result, StoreError};
pub use self::migrate::CURRENT_FORMAT;
pub use self::model::{
    sha256_hex, CollectionRecord, GcReport, IndexParams, ItemPage, ItemRecord, ModalityCounts,
    NewCollection, NewContent, NewItem, OnExistingId, PutOptions, PutOutcome, PutReport,
    MAX_COLLECTION_NAME_LEN, MAX_DIM, MAX_ITEM_ID_LEN, MAX_LABEL_LEN, MAX_MODALITY_LEN,
    MAX_RECORD_TEXT,
};
pub use self::sled::{OpenReport, SledOptions, SledStore, MAX_PAGE};

/// Iterator over the `(seq, vector)` pairs of a collection, in `seq` order.
pub type VectorIter<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<f32>)>> + Send + 'a>;

/// The storage interface the layers above use. Object-safe: hold it as `Arc<dyn Store>`.
///
/// Collection names are 1-64 characters of `[A-Za-z0-9_-]`; a malformed name is
/// [`StoreError::Invalid`], an unknown one [`StoreError::CollectionNotFound`].
pub trait Store: Send + Sync {
    /// Creates an empty collection. Fails with [`StoreError::CollectionExists`] when a
    /// collection of the same name, compared case-insensitively, exists.
    fn create_collection(&self, new: NewCollection) -> Result<CollectionRecord>;

    fn get_collection(&self, name: &str) -> Result<CollectionRecord>;

    /// All collections, in name order.
    fn list_collections(&self) -> Result<Vec<CollectionRecord>>;

    /// Deletes a collection with all its items, vectors and content files; returns its last
    /// record. Once this returns, the name is free again.
    fn delete_collection(&self, name: &str) -> Result<CollectionRecord>;

    /// Stores a batch of items atomically: all of them or, on any error, none.
    ///
    /// Each stored item gets the next sequence number of the collection. Items whose content
    /// is already stored (with [`PutOptions::dedupe`]) come back as
    /// [`PutOutcome::Duplicate`] and are not stored. An explicit id that exists fails the
    /// batch with [`StoreError::Conflict`] unless [`OnExistingId::Replace`] is set. Invalid
    /// input fails with [`StoreError::Invalid`], whose reason names the item's position.
    fn put_items(
        &self,
        collection: &str,
        items: Vec<NewItem>,
        opts: PutOptions,
    ) -> Result<PutReport>;

    fn get_item(&self, collection: &str, id: &str) -> Result<ItemRecord>;

    /// The live item holding sequence number `seq`, or [`StoreError::SeqNotFound`] when that
    /// number was deleted, replaced or never assigned.
    fn get_item_by_seq(&self, collection: &str, seq: u64) -> Result<ItemRecord>;

    /// The vector of the live item with sequence number `seq`.
    fn get_vector(&self, collection: &str, seq: u64) -> Result<Vec<f32>>;

    /// Deletes an item and returns its record. Its content file is removed when no other item
    /// of the collection references it.
    fn delete_item(&self, collection: &str, id: &str) -> Result<ItemRecord>;

    /// Up to `limit` (1..=[`MAX_PAGE`]) items in id order (byte order of the UTF-8 id),
    /// starting after `cursor`. Cursors are opaque and stay valid when items are added or
    /// deleted, including the item the cursor was taken at: every item present during the
    /// whole listing is returned exactly once.
    fn list_items(&self, collection: &str, limit: usize, cursor: Option<&str>) -> Result<ItemPage>;

    /// All `(seq, vector)` pairs of a collection, in `seq` order, for index rebuilds. Not a
    /// snapshot: read [`Store::generation`] before and after to detect concurrent writes.
    fn vectors<'a>(&'a self, collection: &str) -> Result<VectorIter<'a>>;

    /// Number of live items per modality; modalities without items are absent. Kept as
    /// counters updated in the same transaction as the items, so this does not scan.
    fn modality_counts(&self, collection: &str) -> Result<ModalityCounts>;

    /// The collection's generation: a value that changes with every change of the collection
    /// and is never repeated in the database (see [`CollectionRecord::generation`]).
    fn generation(&self, collection: &str) -> Result<u64>;

    /// The original bytes stored under `hash` (64 lowercase hex digits) in the collection.
    fn read_content(&self, collection: &str, hash: &str) -> Result<Vec<u8>>;

    /// The path of the file holding the original bytes stored under `hash`, for serving them
    /// from disk without reading them whole. The file is never written to, but may be removed
    /// at any time after this returns (the item deleted): a reader must take a missing file
    /// as content not found.
    fn content_path(&self, collection: &str, hash: &str) -> Result<std::path::PathBuf>;

    /// Removes content files no record references and interrupted temporary files. Runs at
    /// open; safe to call at any time.
    fn gc_blobs(&self) -> Result<GcReport>;
}
