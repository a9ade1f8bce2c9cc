//! Storage format versions and the migrations between them.
//!
//! The format version lives in the `meta` tree under `format_version` (u32 little-endian). It is
//! written when a database is created and rewritten after each migration step. Each format and
//! each step is documented in `migrations/NNNN_*.md`; the code of step `N-1 -> N` is keyed by
//! `N` in [`MIGRATIONS`]. Every step must be idempotent: a crash in the middle leaves the old
//! version number in place, and the step runs again from the start at the next open.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::error::{Result, StoreError};
use super::keys;

/// The format this build writes. Databases with a newer version are refused.
pub const CURRENT_FORMAT: u32 = 2;

/// One migration step.
pub(crate) struct Migration {
    /// The version the step produces; it reads version `to - 1`.
    pub(crate) to: u32,
    pub(crate) name: &'static str,
    pub(crate) run: fn(&sled::Db) -> Result<()>,
}

/// All steps, in order. `MIGRATIONS[i].to == i + 2`.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    name: "0002_hash_index_and_counters",
    run: migrate_1_to_2,
}];

pub(crate) fn read_version(db: &sled::Db) -> Result<Option<u32>> {
    let meta = db.open_tree(keys::META)?;
    match meta.get(keys::FORMAT_VERSION_KEY)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                StoreError::corrupt("meta", format!("format version has {} bytes", v.len()))
            })?;
            Ok(Some(u32::from_le_bytes(bytes)))
        }
    }
}

fn write_version(db: &sled::Db, version: u32) -> Result<()> {
    let meta = db.open_tree(keys::META)?;
    meta.insert(keys::FORMAT_VERSION_KEY, &version.to_le_bytes())?;
    db.flush()?;
    Ok(())
}

/// Brings the database to [`CURRENT_FORMAT`]: stamps a new database, refuses a newer one, runs
/// the missing steps on an older one. Returns the versions of the steps applied.
pub(crate) fn prepare(db: &sled::Db) -> Result<Vec<u32>> {
    let version = match read_version(db)? {
        Some(v) => v,
        None => {
            // A database is new when no tree holds anything. A crash between creating the
            // files and stamping the version also lands here, which is fine: nothing else was
            // written yet.
            let empty = db
                .tree_names()
                .iter()
                .map(|name| db.open_tree(name).map(|t| t.is_empty()))
                .collect::<std::result::Result<Vec<bool>, _>>()?
                .into_iter()
                .all(|e| e);
            if !empty {
                return Err(StoreError::corrupt(
                    "meta",
                    "the database holds data but no format version",
                ));
            }
            write_version(db, CURRENT_FORMAT)?;
            return Ok(Vec::new());
        }
    };
    if version > CURRENT_FORMAT {
        return Err(StoreError::UnsupportedFormat {
            found: version,
            supported: CURRENT_FORMAT,
        });
    }
    if version == 0 {
        return Err(StoreError::corrupt(
            "meta",
            "format version 0 does not exist",
        ));
    }
    let mut applied = Vec::new();
    for step in MIGRATIONS.iter().filter(|m| m.to > version) {
        tracing::info!(
            from = step.to - 1,
            to = step.to,
            step = step.name,
            "migrating store format"
        );
        (step.run)(db)?;
        write_version(db, step.to)?;
        applied.push(step.to);
    }
    Ok(applied)
}

/// The fields of a format-1 item record that the 1 -> 2 step needs.
#[derive(Deserialize)]
struct V1Item {
    id: String,
    seq: u64,
    modality: String,
    content_hash: Option<String>,
}

/// Format 2 adds the `hashes` tree (content hash -> items) and the `counts` tree
/// (per-collection modality counters), both rebuilt from `items`, and the `clock` key in
/// `meta`, started at the largest generation of any collection.
fn migrate_1_to_2(db: &sled::Db) -> Result<()> {
    let items = db.open_tree(keys::ITEMS)?;
    let hashes = db.open_tree(keys::HASHES)?;
    let counts = db.open_tree(keys::COUNTS)?;
    // Idempotence: start from empty trees whatever an interrupted earlier run left.
    hashes.clear()?;
    counts.clear()?;

    let mut tally: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    for entry in items.iter() {
        let (key, value) = entry?;
        let sep = key.iter().position(|&b| b == 0).ok_or_else(|| {
            StoreError::corrupt("items", "item key without a collection separator")
        })?;
        let coll = std::str::from_utf8(&key[..sep])
            .map_err(|_| StoreError::corrupt("items", "collection name is not UTF-8"))?;
        let item: V1Item = serde_json::from_slice(&value)
            .map_err(|e| StoreError::corrupt("items", format!("format-1 item record: {e}")))?;
        if let Some(hash) = &item.content_hash {
            batch.insert(
                keys::hash_ref(coll, hash, &item.id),
                &item.seq.to_be_bytes(),
            );
            pending += 1;
        }
        *tally.entry((coll.to_owned(), item.modality)).or_default() += 1;
        if pending >= 10_000 {
            hashes.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    hashes.apply_batch(batch)?;

    let mut batch = sled::Batch::default();
    for ((coll, modality), n) in tally {
        batch.insert(keys::count(&coll, &modality), &n.to_le_bytes());
    }
    counts.apply_batch(batch)?;

    // Start the clock after every generation handed out so far.
    let mut clock = 0u64;
    for tree in [keys::COLLECTIONS, keys::PURGING] {
        for entry in db.open_tree(tree)?.iter() {
            let (_, value) = entry?;
            let rec: V1Collection = serde_json::from_slice(&value).map_err(|e| {
                StoreError::corrupt("collections", format!("format-1 collection record: {e}"))
            })?;
            clock = clock.max(rec.generation);
        }
    }
    db.open_tree(keys::META)?
        .insert(keys::CLOCK_KEY, &clock.to_le_bytes())?;
    db.flush()?;
    Ok(())
}

/// The field of a format-1 collection record that the 1 -> 2 step needs.
#[derive(Deserialize)]
struct V1Collection {
    generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_contiguous_and_end_at_current() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.to as usize, i + 2, "step {} out of order", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.to).unwrap_or(1), CURRENT_FORMAT);
    }
}
