//! [`SledStore`]: the [`Store`] implementation on sled, with content files beside it.
//!
//! Layout of the data directory: `db/` is the sled database, `blobs/` the content files (see
//! `blobs.rs`). The trees and key encodings are documented in `migrations/`.
//!
//! Concurrency: reads go straight to sled. Writes are serialised by one mutex, so the
//! read-validate-write of a call (id conflicts, duplicates, counters, sequence numbers) sees no
//! interleaving writer; the writes of a call are committed in one sled transaction over every
//! tree they touch, which sled recovers atomically. Every mutating call flushes sled before it
//! returns Ok, so an acknowledged write survives a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, Transactional};
use sled::{Batch, Db, Tree};

use super::blobs::{self, Blobs};
use super::error::{Result, StoreError};
use super::keys;
use super::migrate;
use super::model::{
    decode_vector, encode_vector, hex_decode, hex_encode, now_ms, validate_collection_name,
    validate_hash, validate_item_id, validate_new_collection, validate_new_item, CollectionRecord,
    GcReport, ItemPage, ItemRecord, ModalityCounts, NewCollection, NewContent, NewItem,
    OnExistingId, PutOptions, PutOutcome, PutReport,
};
use super::{Store, VectorIter};

/// Largest page [`Store::list_items`] returns.
pub const MAX_PAGE: usize = 10_000;

/// Keys removed per batch when purging a deleted collection.
const PURGE_CHUNK: usize = 2_000;

/// Tuning of [`SledStore::open_with`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// sled's page cache size in bytes.
    pub cache_capacity: u64,
    /// How long to wait for the database lock before failing with [`StoreError::Locked`].
    /// sled releases the lock from background threads shortly after the last handle is
    /// dropped, so reopening in the same process can find it still held for a moment.
    pub lock_wait: Duration,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 256 * 1024 * 1024,
            lock_wait: Duration::from_secs(2),
        }
    }
}

/// What [`SledStore::open`] did besides opening.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Format version found on disk (`None` for a new database).
    pub found_format: Option<u32>,
    /// Migration steps applied, by the version each produced.
    pub migrations: Vec<u32>,
    /// Collections whose interrupted deletion was finished.
    pub purged: Vec<String>,
    /// Content files cleaned up.
    pub gc: GcReport,
}

pub(super) struct Trees {
    pub(super) meta: Tree,
    pub(super) collections: Tree,
    pub(super) items: Tree,
    pub(super) seqs: Tree,
    pub(super) vectors: Tree,
    pub(super) hashes: Tree,
    pub(super) counts: Tree,
    pub(super) purging: Tree,
}

/// The sled-backed store. Cheap to share behind an `Arc`; one per data directory (sled locks
/// the database against a second opener).
pub struct SledStore {
    pub(super) db: Db,
    pub(super) t: Trees,
    blobs: Blobs,
    data_dir: PathBuf,
    write_lock: Mutex<()>,
    open_report: OpenReport,
}

impl SledStore {
    /// Opens (creating if needed) the store in `data_dir` with default options.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(data_dir, SledOptions::default())
    }

    /// Opens the store: migrates an older format, refuses a newer one, finishes interrupted
    /// collection deletions and removes orphan content files.
    pub fn open_with(data_dir: impl AsRef<Path>, opts: SledOptions) -> Result<Self> {
        let data_dir = data_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| StoreError::io("creating the data directory", e))?;
        let db = open_db(&data_dir.join("db"), &opts)?;
        let found_format = migrate::read_version(&db)?;
        let migrations = migrate::prepare(&db)?;
        let t = Trees {
            meta: db.open_tree(keys::META)?,
            collections: db.open_tree(keys::COLLECTIONS)?,
            items: db.open_tree(keys::ITEMS)?,
            seqs: db.open_tree(keys::SEQS)?,
            vectors: db.open_tree(keys::VECTORS)?,
            hashes: db.open_tree(keys::HASHES)?,
            counts: db.open_tree(keys::COUNTS)?,
            purging: db.open_tree(keys::PURGING)?,
        };
        let mut store = SledStore {
            db,
            t,
            blobs: Blobs::new(data_dir.join("blobs")),
            data_dir,
            write_lock: Mutex::new(()),
            open_report: OpenReport {
                found_format,
                migrations,
                ..OpenReport::default()
            },
        };
        {
            let guard = store.lock();
            let purged = store.finish_purges(&guard)?;
            let gc = store.gc_locked(&guard)?;
            drop(guard);
            store.open_report.purged = purged;
            store.open_report.gc = gc;
        }
        // Make the freshly created trees durable too.
        store.db.flush()?;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What opening did (migrations, recovered deletions, garbage collection).
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded state is in sled, so a panic elsewhere leaves nothing half-updated here.
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_collection(&self, name: &str) -> Result<CollectionRecord> {
        validate_collection_name(name)?;
        match self.t.collections.get(name.as_bytes())? {
            Some(v) => decode_collection(&v),
            None => Err(StoreError::CollectionNotFound(name.to_owned())),
        }
    }

    fn load_item(&self, coll: &str, id: &str) -> Result<Option<ItemRecord>> {
        self.t
            .items
            .get(keys::item(coll, id))?
            .map(|v| decode_item(&v))
            .transpose()
    }

    /// First item (in id order) referencing `hash` in `coll`, skipping ids `skip` rejects.
    fn hash_owner(
        &self,
        coll: &str,
        hash: &str,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Option<(String, u64)>> {
        let prefix = keys::hash_prefix(coll, hash);
        for entry in self.t.hashes.scan_prefix(&prefix) {
            let (k, v) = entry?;
            let id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::corrupt("hashes", "item id is not UTF-8"))?;
            if skip(id) {
                continue;
            }
            let seq = keys::decode_u64_be(&v)
                .ok_or_else(|| StoreError::corrupt("hashes", "sequence number is not 8 bytes"))?;
            return Ok(Some((id.to_owned(), seq)));
        }
        Ok(None)
    }

    fn hash_referenced(&self, coll: &str, hash: &str) -> Result<bool> {
        Ok(self
            .t
            .hashes
            .scan_prefix(keys::hash_prefix(coll, hash))
            .next()
            .transpose()?
            .is_some())
    }

    /// Commits per-tree batches in one transaction. Order of the tuple is fixed.
    fn commit(&self, b: Batches) -> Result<()> {
        let t = &self.t;
        (
            &t.meta,
            &t.collections,
            &t.items,
            &t.seqs,
            &t.vectors,
            &t.hashes,
            &t.counts,
            &t.purging,
        )
            .transaction(
                |(meta, collections, items, seqs, vectors, hashes, counts, purging)| {
                    meta.apply_batch(&b.meta)?;
                    collections.apply_batch(&b.collections)?;
                    items.apply_batch(&b.items)?;
                    seqs.apply_batch(&b.seqs)?;
                    vectors.apply_batch(&b.vectors)?;
                    hashes.apply_batch(&b.hashes)?;
                    counts.apply_batch(&b.counts)?;
                    purging.apply_batch(&b.purging)?;
                    Ok::<(), ConflictableTransactionError<StoreError>>(())
                },
            )?;
        Ok(())
    }

    /// The next value of the database-wide clock, staged in `b` (callers hold the write lock).
    fn tick(&self, b: &mut Batches) -> Result<u64> {
        let current = match self.t.meta.get(keys::CLOCK_KEY)? {
            Some(v) => keys::decode_u64_le(&v)
                .ok_or_else(|| StoreError::corrupt("meta", "clock is not 8 bytes"))?,
            None => 0,
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| StoreError::corrupt("meta", "clock is at its maximum"))?;
        b.meta.insert(keys::CLOCK_KEY, &next.to_le_bytes());
        Ok(next)
    }

    /// Adds counter updates for `delta` (modality -> change) to `batch`.
    fn count_updates(
        &self,
        coll: &str,
        delta: &BTreeMap<String, i64>,
        batch: &mut Batch,
    ) -> Result<()> {
        for (modality, d) in delta {
            if *d == 0 {
                continue;
            }
            let key = keys::count(coll, modality);
            let current = match self.t.counts.get(&key)? {
                Some(v) => keys::decode_u64_le(&v)
                    .ok_or_else(|| StoreError::corrupt("counts", "counter is not 8 bytes"))?,
                None => 0,
            };
            let next = i64::try_from(current)
                .ok()
                .and_then(|c| c.checked_add(*d))
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    StoreError::corrupt(
                        "counts",
                        format!("counter of `{modality}` in `{coll}` is out of range ({current})"),
                    )
                })?;
            if next == 0 {
                batch.remove(key);
            } else {
                batch.insert(key, &(next as u64).to_le_bytes());
            }
        }
        Ok(())
    }

    fn finish_purges(&self, guard: &MutexGuard<'_, ()>) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in self.t.purging.iter() {
            let (k, _) = entry?;
            let name = String::from_utf8(k.to_vec())
                .ok()
                .filter(|n| validate_collection_name(n).is_ok())
                .ok_or_else(|| StoreError::corrupt("purging", "invalid collection name"))?;
            names.push(name);
        }
        for name in &names {
            tracing::info!(collection = %name, "finishing an interrupted collection deletion");
            if let Some(trash) = self.purge(name, guard)? {
                blobs::remove_trash(&trash);
            }
        }
        Ok(names)
    }

    /// Removes every key of a collection whose record is already gone and whose name is in
    /// `purging`, and moves its content directory aside; returns that directory for the caller
    /// to remove (unlinking many files is slow, and needs no lock). Restartable at any point.
    fn purge(&self, coll: &str, _guard: &MutexGuard<'_, ()>) -> Result<Option<PathBuf>> {
        let start = keys::prefix(coll);
        let end = keys::prefix_end(coll);
        for tree in [
            &self.t.items,
            &self.t.seqs,
            &self.t.vectors,
            &self.t.hashes,
            &self.t.counts,
        ] {
            loop {
                let mut batch = Batch::default();
                let mut n = 0;
                for entry in tree.range(start.clone()..end.clone()).take(PURGE_CHUNK) {
                    let (k, _) = entry?;
                    batch.remove(k);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                tree.apply_batch(batch)?;
            }
        }
        // Records first: after this flush no record references the files.
        self.db.flush()?;
        let trash = self.blobs.move_to_trash(coll)?;
        self.t.purging.remove(coll.as_bytes())?;
        self.db.flush()?;
        Ok(trash)
    }

    fn gc_locked(&self, _guard: &MutexGuard<'_, ()>) -> Result<GcReport> {
        let report = self.blobs.gc(
            &|coll| Ok(self.t.collections.contains_key(coll.as_bytes())?),
            &|coll, hash| self.hash_referenced(coll, hash),
        )?;
        if report != GcReport::default() {
            tracing::info!(?report, "removed unreferenced content files");
        }
        Ok(report)
    }

    /// An id for an item that came without one: the sequence number in 16 hex digits, so
    /// generated ids list in insertion order. A client may have taken that string as an
    /// explicit id; then a suffix makes it unique.
    fn generate_id(&self, coll: &str, seq: u64, taken: &HashSet<String>) -> Result<String> {
        let base = format!("{seq:016x}");
        let mut candidate = base.clone();
        let mut n = 0u32;
        while taken.contains(&candidate)
            || self.t.items.contains_key(keys::item(coll, &candidate))?
        {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        Ok(candidate)
    }
}

#[derive(Default)]
struct Batches {
    meta: Batch,
    collections: Batch,
    items: Batch,
    seqs: Batch,
    vectors: Batch,
    hashes: Batch,
    counts: Batch,
    purging: Batch,
}

/// Opens sled, retrying while its lock is held, for up to `opts.lock_wait`.
pub(super) fn open_db(path: &Path, opts: &SledOptions) -> Result<Db> {
    let deadline = Instant::now() + opts.lock_wait;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports a held lock only through this message (0.34).
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: path.display().to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn decode_collection(bytes: &[u8]) -> Result<CollectionRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt("collections", format!("collection record: {e}")))
}

fn decode_item(bytes: &[u8]) -> Result<ItemRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt("items", format!("item record: {e}")))
}

fn encode_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}

/// Prefixes the position of the failing item to a validation error.
fn at_item(i: usize, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid { field, reason } => StoreError::Invalid {
            field,
            reason: format!("item {i}: {reason}"),
        },
        other => other,
    }
}

/// One stored item of a put, before commit.
struct Planned {
    record: ItemRecord,
    vector: Vec<f32>,
    content: Option<NewContent>,
}

impl Store for SledStore {
    fn create_collection(&self, new: NewCollection) -> Result<CollectionRecord> {
        validate_new_collection(&new)?;
        let guard = self.lock();
        // A deletion that failed half-way (I/O error) must finish before the name is reused.
        self.finish_purges(&guard)?;
        for entry in self.t.collections.iter() {
            let (k, _) = entry?;
            if k.eq_ignore_ascii_case(new.name.as_bytes()) {
                return Err(StoreError::CollectionExists(
                    String::from_utf8_lossy(&k).into_owned(),
                ));
            }
        }
        let mut b = Batches::default();
        // The creation's clock value is both the first generation and the incarnation.
        let clock = self.tick(&mut b)?;
        let record = CollectionRecord {
            name: new.name,
            model: new.model,
            dim: new.dim,
            index: new.index,
            auto_tags: new.auto_tags,
            created_at: now_ms(),
            next_seq: 0,
            generation: clock,
            incarnation: clock,
        };
        b.collections
            .insert(record.name.as_bytes(), encode_json(&record));
        self.commit(b)?;
        self.db.flush()?;
        Ok(record)
    }

    fn get_collection(&self, name: &str) -> Result<CollectionRecord> {
        self.load_collection(name)
    }

    fn list_collections(&self) -> Result<Vec<CollectionRecord>> {
        self.t
            .collections
            .iter()
            .map(|entry| decode_collection(&entry?.1))
            .collect()
    }

    fn delete_collection(&self, name: &str) -> Result<CollectionRecord> {
        let guard = self.lock();
        let record = self.load_collection(name)?;
        let mut b = Batches::default();
        b.collections.remove(name.as_bytes());
        b.purging.insert(name.as_bytes(), encode_json(&record));
        self.commit(b)?;
        // From here the collection is invisible; the rest is restartable.
        self.db.flush()?;
        let trash = self.purge(name, &guard)?;
        drop(guard);
        if let Some(trash) = trash {
            blobs::remove_trash(&trash);
        }
        Ok(record)
    }

    fn put_items(
        &self,
        collection: &str,
        items: Vec<NewItem>,
        opts: PutOptions,
    ) -> Result<PutReport> {
        // Hashing large contents needs no lock.
        let hashes: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.content
                    .as_ref()
                    .map(NewContent::sha256)
                    .transpose()
                    .map_err(|e| at_item(i, e))
            })
            .collect::<Result<_>>()?;
        let guard = self.lock();
        let mut coll = self.load_collection(collection)?;
        if opts.incarnation.is_some_and(|i| i != coll.incarnation) {
            // The collection the caller looked up was deleted; this is another of its name.
            return Err(StoreError::CollectionNotFound(collection.to_owned()));
        }
        // Validate everything before writing anything: a bad item fails the whole batch.
        let mut taken: HashSet<String> = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            validate_new_item(&coll, item).map_err(|e| at_item(i, e))?;
            if let Some(id) = &item.id {
                if !taken.insert(id.clone()) {
                    return Err(StoreError::Conflict {
                        collection: collection.to_owned(),
                        id: id.clone(),
                        reason: "the id appears more than once in the batch".into(),
                    });
                }
            }
        }

        let now = now_ms();
        let replace = opts.on_existing_id == OnExistingId::Replace;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut planned: Vec<Planned> = Vec::new();
        let mut replaced: Vec<ItemRecord> = Vec::new();
        let mut replaced_ids: HashSet<String> = HashSet::new();
        // Content hash -> first item of this batch that stores it.
        let mut batch_owner: HashMap<String, (String, u64)> = HashMap::new();
        let mut count_delta: BTreeMap<String, i64> = BTreeMap::new();

        for (item, hash) in items.into_iter().zip(hashes) {
            if let (true, Some(h)) = (opts.dedupe, &hash) {
                if let Some((id, seq)) = batch_owner.get(h) {
                    outcomes.push(PutOutcome::Duplicate {
                        id: id.clone(),
                        seq: *seq,
                    });
                    continue;
                }
                // When replacing, an item's own old content does not make it a duplicate; the
                // old content of items replaced earlier in this batch no longer counts either.
                let own = if replace { item.id.as_deref() } else { None };
                if let Some((id, seq)) = self.hash_owner(collection, h, |id| {
                    Some(id) == own || replaced_ids.contains(id)
                })? {
                    outcomes.push(PutOutcome::Duplicate { id, seq });
                    continue;
                }
            }

            let seq = coll.next_seq;
            let (id, old) = match item.id {
                Some(id) => {
                    let old = self.load_item(collection, &id)?;
                    if old.is_some() && !replace {
                        return Err(StoreError::Conflict {
                            collection: collection.to_owned(),
                            id,
                            reason: "an item with this id already exists".into(),
                        });
                    }
                    (id, old)
                }
                None => {
                    let id = self.generate_id(collection, seq, &taken)?;
                    taken.insert(id.clone());
                    (id, None)
                }
            };
            coll.next_seq = seq.checked_add(1).ok_or_else(|| {
                StoreError::corrupt("collections", "sequence number is at its maximum")
            })?;
            match old {
                Some(old) => {
                    outcomes.push(PutOutcome::Replaced {
                        id: id.clone(),
                        seq,
                        old_seq: old.seq,
                    });
                    *count_delta.entry(old.modality.clone()).or_default() -= 1;
                    replaced_ids.insert(id.clone());
                    replaced.push(old);
                }
                None => outcomes.push(PutOutcome::Inserted {
                    id: id.clone(),
                    seq,
                }),
            }
            if let Some(h) = &hash {
                batch_owner
                    .entry(h.clone())
                    .or_insert_with(|| (id.clone(), seq));
            }
            *count_delta.entry(item.modality.clone()).or_default() += 1;
            let content_len = item.content.as_ref().map_or(0, NewContent::len);
            let (text, text_truncated) = super::model::record_text(item.text);
            planned.push(Planned {
                record: ItemRecord {
                    id,
                    seq,
                    modality: item.modality,
                    content_hash: hash,
                    content_type: item.content_type,
                    content_len,
                    text,
                    text_truncated,
                    metadata: item.metadata,
                    model: item.model,
                    weights_hash: item.weights_hash,
                    preprocess_version: item.preprocess_version,
                    created_at: now,
                },
                vector: item.vector,
                content: item.content,
            });
        }

        if planned.is_empty() {
            return Ok(PutReport {
                outcomes,
                generation: coll.generation,
            });
        }

        // Content files become durable before any record points at them.
        let files: Vec<(&str, &NewContent)> = planned
            .iter()
            .filter_map(|p| Some((p.record.content_hash.as_deref()?, p.content.as_ref()?)))
            .collect();
        self.blobs.write_all(collection, &files)?;

        let mut b = Batches::default();
        for old in &replaced {
            b.seqs.remove(keys::seq(collection, old.seq));
            b.vectors.remove(keys::seq(collection, old.seq));
            if let Some(h) = &old.content_hash {
                b.hashes.remove(keys::hash_ref(collection, h, &old.id));
            }
        }
        for p in &planned {
            let r = &p.record;
            b.items
                .insert(keys::item(collection, &r.id), encode_json(r));
            b.seqs.insert(keys::seq(collection, r.seq), r.id.as_bytes());
            b.vectors
                .insert(keys::seq(collection, r.seq), encode_vector(&p.vector));
            if let Some(h) = &r.content_hash {
                b.hashes
                    .insert(keys::hash_ref(collection, h, &r.id), &r.seq.to_be_bytes());
            }
        }
        self.count_updates(collection, &count_delta, &mut b.counts)?;
        coll.generation = self.tick(&mut b)?;
        b.collections
            .insert(collection.as_bytes(), encode_json(&coll));
        self.commit(b)?;

        let old_hashes: Vec<&str> = replaced
            .iter()
            .filter_map(|r| r.content_hash.as_deref())
            .collect();
        if old_hashes.is_empty() {
            // Nothing to remove: let concurrent writers share the flush.
            drop(guard);
            self.db.flush()?;
        } else {
            self.db.flush()?;
            let mut unreferenced = Vec::new();
            for h in old_hashes {
                if !self.hash_referenced(collection, h)? && !unreferenced.contains(&h) {
                    unreferenced.push(h);
                }
            }
            self.blobs.remove_all(collection, &unreferenced)?;
            drop(guard);
        }
        Ok(PutReport {
            outcomes,
            generation: coll.generation,
        })
    }

    fn get_item(&self, collection: &str, id: &str) -> Result<ItemRecord> {
        self.load_collection(collection)?;
        validate_item_id(id)?;
        self.load_item(collection, id)?
            .ok_or_else(|| StoreError::ItemNotFound {
                collection: collection.to_owned(),
                id: id.to_owned(),
            })
    }

    fn get_item_by_seq(&self, collection: &str, seq: u64) -> Result<ItemRecord> {
        validate_collection_name(collection)?;
        let not_found = || StoreError::SeqNotFound {
            collection: collection.to_owned(),
            seq,
        };
        let id = match self.t.seqs.get(keys::seq(collection, seq))? {
            Some(id) => id,
            None => {
                self.load_collection(collection)?;
                return Err(not_found());
            }
        };
        let id = std::str::from_utf8(&id)
            .map_err(|_| StoreError::corrupt("seqs", "item id is not UTF-8"))?;
        match self.load_item(collection, id)? {
            Some(record) if record.seq == seq => Ok(record),
            other => {
                // The two reads are not one snapshot: a delete or replace committed in between
                // removes the sequence number for good, so look again before calling it corrupt.
                if !self.t.seqs.contains_key(keys::seq(collection, seq))? {
                    return Err(not_found());
                }
                Err(StoreError::corrupt(
                    "seqs",
                    match other {
                        Some(r) => {
                            format!("seq {seq} points at item `{id}` whose seq is {}", r.seq)
                        }
                        None => format!("seq {seq} points at missing item `{id}`"),
                    },
                ))
            }
        }
    }

    fn get_vector(&self, collection: &str, seq: u64) -> Result<Vec<f32>> {
        let coll = self.load_collection(collection)?;
        match self.t.vectors.get(keys::seq(collection, seq))? {
            Some(v) => decode_vector(&v, coll.dim),
            None => Err(StoreError::SeqNotFound {
                collection: collection.to_owned(),
                seq,
            }),
        }
    }

    fn delete_item(&self, collection: &str, id: &str) -> Result<ItemRecord> {
        validate_item_id(id)?;
        let guard = self.lock();
        let mut coll = self.load_collection(collection)?;
        let record = self
            .load_item(collection, id)?
            .ok_or_else(|| StoreError::ItemNotFound {
                collection: collection.to_owned(),
                id: id.to_owned(),
            })?;
        let mut b = Batches::default();
        b.items.remove(keys::item(collection, id));
        b.seqs.remove(keys::seq(collection, record.seq));
        b.vectors.remove(keys::seq(collection, record.seq));
        if let Some(h) = &record.content_hash {
            b.hashes.remove(keys::hash_ref(collection, h, id));
        }
        let delta = BTreeMap::from([(record.modality.clone(), -1i64)]);
        self.count_updates(collection, &delta, &mut b.counts)?;
        coll.generation = self.tick(&mut b)?;
        b.collections
            .insert(collection.as_bytes(), encode_json(&coll));
        self.commit(b)?;
        // The record must be durably gone before its file goes.
        self.db.flush()?;
        if let Some(h) = &record.content_hash {
            if !self.hash_referenced(collection, h)? {
                self.blobs.remove(collection, h)?;
            }
        }
        drop(guard);
        Ok(record)
    }

    fn list_items(&self, collection: &str, limit: usize, cursor: Option<&str>) -> Result<ItemPage> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(StoreError::invalid(
                "limit",
                format!("must be 1..={MAX_PAGE}"),
            ));
        }
        self.load_collection(collection)?;
        let start = match cursor {
            None => Bound::Included(keys::prefix(collection)),
            Some(c) => {
                let after = decode_cursor(c)?;
                Bound::Excluded(keys::item(collection, &after))
            }
        };
        let end = Bound::Excluded(keys::prefix_end(collection));
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for entry in self.t.items.range::<Vec<u8>, _>((start, end)) {
            let (_, v) = entry?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode_item(&v)?);
        }
        let next_cursor = if more {
            items
                .last()
                .map(|r: &ItemRecord| hex_encode(r.id.as_bytes()))
        } else {
            None
        };
        Ok(ItemPage { items, next_cursor })
    }

    fn vectors<'a>(&'a self, collection: &str) -> Result<VectorIter<'a>> {
        let coll = self.load_collection(collection)?;
        let name = coll.name.clone();
        let dim = coll.dim;
        let iter = self
            .t
            .vectors
            .scan_prefix(keys::prefix(collection))
            .map(move |entry| {
                let (k, v) = entry?;
                let seq = keys::decode_u64_be(keys::suffix(&name, &k)).ok_or_else(|| {
                    StoreError::corrupt("vectors", "key is not a sequence number")
                })?;
                Ok((seq, decode_vector(&v, dim)?))
            });
        Ok(Box::new(iter))
    }

    fn modality_counts(&self, collection: &str) -> Result<ModalityCounts> {
        self.load_collection(collection)?;
        let mut out = ModalityCounts::new();
        for entry in self.t.counts.scan_prefix(keys::prefix(collection)) {
            let (k, v) = entry?;
            let modality = std::str::from_utf8(keys::suffix(collection, &k))
                .map_err(|_| StoreError::corrupt("counts", "modality is not UTF-8"))?;
            let n = keys::decode_u64_le(&v)
                .ok_or_else(|| StoreError::corrupt("counts", "counter is not 8 bytes"))?;
            out.insert(modality.to_owned(), n);
        }
        Ok(out)
    }

    fn generation(&self, collection: &str) -> Result<u64> {
        Ok(self.load_collection(collection)?.generation)
    }

    fn read_content(&self, collection: &str, hash: &str) -> Result<Vec<u8>> {
        self.with_content(collection, hash, |p| std::fs::read(p))
    }

    fn content_path(&self, collection: &str, hash: &str) -> Result<PathBuf> {
        self.with_content(collection, hash, |p| {
            std::fs::metadata(p).map(|_| p.to_path_buf())
        })
    }

    fn gc_blobs(&self) -> Result<GcReport> {
        let guard = self.lock();
        self.gc_locked(&guard)
    }
}

impl SledStore {
    /// `f` on the content file of `hash` in `collection`, once a record is known to reference
    /// it; a referenced file that is missing is a corrupt store unless it was deleted meanwhile.
    fn with_content<T>(
        &self,
        collection: &str,
        hash: &str,
        f: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> Result<T> {
        validate_hash(hash)?;
        self.load_collection(collection)?;
        let not_found = || StoreError::ContentNotFound {
            collection: collection.to_owned(),
            hash: hash.to_owned(),
        };
        if !self.hash_referenced(collection, hash)? {
            return Err(not_found());
        }
        match f(&self.blobs.path(collection, hash)) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Referenced but absent: either deleted between the two reads, or lost.
                if self.hash_referenced(collection, hash)? {
                    Err(StoreError::corrupt(
                        "hashes",
                        format!("content file {hash} of `{collection}` is missing"),
                    ))
                } else {
                    Err(not_found())
                }
            }
            Err(e) => Err(StoreError::io("reading a content file", e)),
        }
    }
}

fn decode_cursor(c: &str) -> Result<String> {
    let bad = || StoreError::invalid("cursor", "not a cursor returned by list_items");
    let bytes = hex_decode(c).ok_or_else(bad)?;
    let id = String::from_utf8(bytes).map_err(|_| bad())?;
    validate_item_id(&id).map_err(|_| bad())?;
    Ok(id)
}
