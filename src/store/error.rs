//! The store layer's error type. Only the HTTP edge maps these to status codes.

use std::io;

/// Everything a [`Store`](super::Store) operation can fail with.
///
/// Variants are stable: the API layer matches on them exhaustively to pick a status code and
/// an error code. Messages never contain file system paths of the data directory beyond the
/// `Io` context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No collection of that name.
    #[error("collection `{0}` not found")]
    CollectionNotFound(String),

    /// No item with that id in the collection.
    #[error("item `{id}` not found in collection `{collection}`")]
    ItemNotFound { collection: String, id: String },

    /// No live item with that internal sequence number (never assigned, or deleted/replaced).
    #[error("no item with sequence number {seq} in collection `{collection}`")]
    SeqNotFound { collection: String, seq: u64 },

    /// No stored content with that hash in the collection.
    #[error("content {hash} not found in collection `{collection}`")]
    ContentNotFound { collection: String, hash: String },

    /// A collection of that name (compared case-insensitively, because the name is also a
    /// directory name) already exists.
    #[error("collection `{0}` already exists")]
    CollectionExists(String),

    /// The write conflicts with stored state or with another item of the same batch, e.g. an
    /// explicit id that already exists while replacement was not requested.
    #[error("conflict on item `{id}` in collection `{collection}`: {reason}")]
    Conflict {
        collection: String,
        id: String,
        reason: String,
    },

    /// Input rejected by validation; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// A stored record could not be decoded or breaks an invariant of the format.
    #[error("corrupt record in `{tree}`: {detail}")]
    Corrupt { tree: &'static str, detail: String },

    /// The database was written by a newer build with a format this build does not know.
    #[error(
        "store format version {found} is newer than this build supports (up to {supported}); \
         upgrade the binary or restore a backup"
    )]
    UnsupportedFormat { found: u32, supported: u32 },

    /// Another process (or a handle in this process that is still shutting down) holds the
    /// database's lock.
    #[error("the database in {path} is in use by another process")]
    Locked { path: String },

    /// A file system operation on content files failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The embedded database engine failed (I/O, corruption detected by the engine, lock held
    /// by another process, ...).
    #[error("storage engine error: {0}")]
    Engine(#[from] ::sled::Error),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(tree: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            tree,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<::sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: ::sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            ::sled::transaction::TransactionError::Abort(e) => e,
            ::sled::transaction::TransactionError::Storage(e) => StoreError::Engine(e),
        }
    }
}

/// Shorthand used throughout the layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
