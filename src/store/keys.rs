//! Key encodings of the sled trees (see `migrations/` for the full layout).
//!
//! Every per-collection key starts with the collection name and a 0 byte. Collection names
//! cannot contain 0, so `name\0` is a prefix of exactly that collection's keys; item ids
//! cannot contain control characters, so the 0 separating a hash from an id is unambiguous.
//! Numbers inside keys are big-endian so that byte order is numeric order.

/// Tree names.
pub(crate) const META: &str = "meta";
pub(crate) const COLLECTIONS: &str = "collections";
pub(crate) const ITEMS: &str = "items";
pub(crate) const SEQS: &str = "seqs";
pub(crate) const VECTORS: &str = "vectors";
pub(crate) const PURGING: &str = "purging";
/// Added by format 2.
pub(crate) const HASHES: &str = "hashes";
/// Added by format 2.
pub(crate) const COUNTS: &str = "counts";

/// Key of the format version in [`META`]; value: u32 little-endian.
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Key of the database-wide change clock in [`META`] (format 2); value: u64 little-endian.
/// The last value handed out as a collection generation.
pub(crate) const CLOCK_KEY: &[u8] = b"clock";

pub(crate) fn prefix(coll: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(coll.len() + 1);
    k.extend_from_slice(coll.as_bytes());
    k.push(0);
    k
}

/// The first key after every key starting with `prefix(coll)`.
pub(crate) fn prefix_end(coll: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(coll.len() + 1);
    k.extend_from_slice(coll.as_bytes());
    k.push(1);
    k
}

pub(crate) fn item(coll: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(coll);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn seq(coll: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(coll);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn hash_prefix(coll: &str, hash: &str) -> Vec<u8> {
    let mut k = prefix(coll);
    k.extend_from_slice(hash.as_bytes());
    k.push(0);
    k
}

pub(crate) fn hash_ref(coll: &str, hash: &str, id: &str) -> Vec<u8> {
    let mut k = hash_prefix(coll, hash);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn count(coll: &str, modality: &str) -> Vec<u8> {
    let mut k = prefix(coll);
    k.extend_from_slice(modality.as_bytes());
    k
}

/// The part of a per-collection key after `name\0`.
pub(crate) fn suffix<'a>(coll: &str, key: &'a [u8]) -> &'a [u8] {
    &key[coll.len() + 1..]
}

pub(crate) fn decode_u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn decode_u64_le(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
