//! Uploaded files spooled to disk while they are received, so that a large or slow upload holds
//! a file, not memory: `<data_dir>/spool/`, one temp file per uploaded file, named by the
//! server (never by the client), deleted when the upload is done with it. Files left by a
//! crash are removed when the spool is opened.
//!
//! A spooled file becomes a [`Media::File`]: encoders read it when they decode it, and the store
//! hard-links it into its content directory (the spool sits in the data directory, so on the
//! same file system), so its bytes are neither held in memory for the whole request nor copied.
//!
//! The spool keeps a ledger of the bytes its files hold, per owner (the API passes the client:
//! its API key, else its address) and in all, and refuses a write that would take an owner
//! past [`SpoolQuota::per_owner`] or the spool past [`SpoolQuota::total`], so that slow
//! uploads on many connections cannot fill the disk. A file counts until it is deleted, that
//! is until the last clone of its [`Media`] is dropped (the ledger holds weak references and
//! forgets files that are gone).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::embed::Media;

/// Size of the write buffer of a file being spooled.
const WRITE_BUFFER: usize = 256 * 1024;
const PREFIX: &str = "upload-";

/// The most bytes spool files may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolQuota {
    /// For the files of one owner.
    pub per_owner: u64,
    /// For all files.
    pub total: u64,
}

impl SpoolQuota {
    /// No limit.
    pub const UNLIMITED: SpoolQuota = SpoolQuota {
        per_owner: u64::MAX,
        total: u64::MAX,
    };
}

/// What became of a write to a spooled file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The bytes were appended.
    Done,
    /// The file would grow over the limit given to [`SpoolFile::write`].
    OverFileLimit,
    /// The owner's files would hold more than [`SpoolQuota::per_owner`].
    OverOwnerQuota,
    /// All files would hold more than [`SpoolQuota::total`].
    OverTotalQuota,
}

/// One file in the ledger.
#[derive(Debug)]
struct Entry {
    owner: Arc<str>,
    /// Gone (deleted) once every strong reference is dropped.
    path: Weak<TempPath>,
    len: u64,
}

/// Bytes held by spool files, per owner and in all. Counts of deleted files are removed by
/// [`Ledger::prune`], which runs when a file is created and before a write is refused.
#[derive(Debug, Default)]
struct Ledger {
    next_id: u64,
    files: HashMap<u64, Entry>,
    owners: HashMap<Arc<str>, u64>,
    total: u64,
}

impl Ledger {
    fn prune(&mut self) {
        let owners = &mut self.owners;
        let total = &mut self.total;
        self.files.retain(|_, e| {
            if e.path.strong_count() > 0 {
                return true;
            }
            *total -= e.len;
            let emptied = owners.get_mut(&e.owner).is_some_and(|n| {
                *n -= e.len;
                *n == 0
            });
            if emptied {
                owners.remove(&e.owner);
            }
            false
        });
    }

    fn check(&self, owner: &str, n: u64, quota: SpoolQuota) -> Written {
        let own = self.owners.get(owner).copied().unwrap_or(0);
        if own.saturating_add(n) > quota.per_owner {
            Written::OverOwnerQuota
        } else if self.total.saturating_add(n) > quota.total {
            Written::OverTotalQuota
        } else {
            Written::Done
        }
    }

    /// Counts `n` more bytes for file `id`, unless that would break the quota.
    fn reserve(&mut self, id: u64, n: u64, quota: SpoolQuota) -> Written {
        let Some(owner) = self.files.get(&id).map(|e| e.owner.clone()) else {
            return Written::Done;
        };
        if self.check(&owner, n, quota) != Written::Done {
            self.prune();
            let verdict = self.check(&owner, n, quota);
            if verdict != Written::Done {
                return verdict;
            }
        }
        if let Some(e) = self.files.get_mut(&id) {
            e.len += n;
        }
        *self.owners.entry(owner).or_default() += n;
        self.total += n;
        Written::Done
    }
}

/// The directory uploads are spooled to, with the ledger of its quotas.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    quota: SpoolQuota,
    ledger: Arc<Mutex<Ledger>>,
}

impl Spool {
    /// Creates `dir` when missing and removes what a previous process left in it.
    pub fn open(dir: impl Into<PathBuf>, quota: SpoolQuota) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let res = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(Spool {
            dir,
            quota,
            ledger: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held by `owner`'s spool files.
    pub fn used_by(&self, owner: &str) -> u64 {
        let mut ledger = self.ledger.lock().expect("spool ledger");
        ledger.prune();
        ledger.owners.get(owner).copied().unwrap_or(0)
    }

    /// Bytes held by all spool files.
    pub fn used(&self) -> u64 {
        let mut ledger = self.ledger.lock().expect("spool ledger");
        ledger.prune();
        ledger.total
    }

    /// Starts a new spooled file, whose bytes count against `owner`'s quota.
    pub fn create(&self, owner: &str) -> io::Result<SpoolFile> {
        let (file, path) = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempfile_in(&self.dir)?
            .into_parts();
        let path = Arc::new(path);
        let id = {
            let mut ledger = self.ledger.lock().expect("spool ledger");
            ledger.prune();
            let id = ledger.next_id;
            ledger.next_id += 1;
            ledger.files.insert(
                id,
                Entry {
                    owner: owner.into(),
                    path: Arc::downgrade(&path),
                    len: 0,
                },
            );
            id
        };
        Ok(SpoolFile {
            file: tokio::io::BufWriter::with_capacity(
                WRITE_BUFFER,
                tokio::fs::File::from_std(file),
            ),
            path,
            len: 0,
            id,
            quota: self.quota,
            ledger: self.ledger.clone(),
        })
    }
}

/// A file being received; removed if dropped before [`SpoolFile::finish`].
pub struct SpoolFile {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: Arc<TempPath>,
    len: u64,
    id: u64,
    quota: SpoolQuota,
    ledger: Arc<Mutex<Ledger>>,
}

impl SpoolFile {
    /// Appends `chunk`, unless the file would grow over `limit` bytes or the spool's quota
    /// would be broken (nothing is written then; the answer says which).
    pub async fn write(&mut self, chunk: &[u8], limit: u64) -> io::Result<Written> {
        let len = self.len + chunk.len() as u64;
        if len > limit {
            return Ok(Written::OverFileLimit);
        }
        let verdict = self.ledger.lock().expect("spool ledger").reserve(
            self.id,
            chunk.len() as u64,
            self.quota,
        );
        if verdict != Written::Done {
            return Ok(verdict);
        }
        self.file.write_all(chunk).await?;
        self.len = len;
        Ok(Written::Done)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and closes the file; it is deleted when the last clone of the returned media is
    /// dropped.
    pub async fn finish(mut self) -> io::Result<Media> {
        self.file.flush().await?;
        self.file.into_inner().shutdown().await?;
        Ok(Media::File {
            path: self.path,
            len: self.len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn spooled_bytes_round_trip_and_the_file_goes_with_the_last_clone() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path().join("spool"), SpoolQuota::UNLIMITED).unwrap();
        let mut f = spool.create("a").unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in data.chunks(65_536) {
            assert_eq!(f.write(chunk, 1 << 20).await.unwrap(), Written::Done);
        }
        assert_eq!(f.len(), data.len() as u64);
        let media = f.finish().await.unwrap();
        assert_eq!(media.len(), data.len() as u64);
        assert_eq!(&*media.load().unwrap(), data.as_slice());
        assert_eq!(&*media.head(10).unwrap(), &data[..10]);
        let Media::File { path, .. } = &media else {
            panic!("a spooled upload is a file")
        };
        let path: PathBuf = path.to_path_buf();
        assert!(path.starts_with(spool.dir()));
        let clone = media.clone();
        drop(media);
        assert!(path.is_file(), "a clone keeps the file");
        drop(clone);
        assert!(!path.exists(), "the last clone removes the file");
    }

    #[tokio::test]
    async fn a_write_over_the_limit_is_refused_and_an_unfinished_file_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path(), SpoolQuota::UNLIMITED).unwrap();
        let mut f = spool.create("a").unwrap();
        assert_eq!(f.write(&[1; 600], 1000).await.unwrap(), Written::Done);
        assert_eq!(
            f.write(&[2; 600], 1000).await.unwrap(),
            Written::OverFileLimit
        );
        assert_eq!(f.len(), 600);
        assert_eq!(names(tmp.path()).len(), 1);
        drop(f);
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn opening_removes_leftovers_of_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("upload-abc"), b"left").unwrap();
        std::fs::create_dir(tmp.path().join("stray")).unwrap();
        std::fs::write(tmp.path().join("stray/x"), b"x").unwrap();
        let spool = Spool::open(tmp.path(), SpoolQuota::UNLIMITED).unwrap();
        assert!(names(spool.dir()).is_empty());
    }

    #[tokio::test]
    async fn quotas_per_owner_and_in_all_count_files_until_they_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let quota = SpoolQuota {
            per_owner: 1000,
            total: 1500,
        };
        let spool = Spool::open(tmp.path(), quota).unwrap();
        let mut a1 = spool.create("a").unwrap();
        let mut a2 = spool.create("a").unwrap();
        assert_eq!(a1.write(&[1; 600], 10_000).await.unwrap(), Written::Done);
        // Owner `a` holds 600: 400 more fit, 401 do not, whichever file they go to.
        assert_eq!(
            a2.write(&[1; 401], 10_000).await.unwrap(),
            Written::OverOwnerQuota
        );
        assert_eq!(a2.write(&[1; 400], 10_000).await.unwrap(), Written::Done);
        assert_eq!(spool.used_by("a"), 1000);
        // Another owner has its own quota, within the total.
        let mut b = spool.create("b").unwrap();
        assert_eq!(b.write(&[1; 500], 10_000).await.unwrap(), Written::Done);
        assert_eq!(
            b.write(&[1; 1], 10_000).await.unwrap(),
            Written::OverTotalQuota
        );
        // A finished file still counts while its media lives; an abandoned one stops at once.
        let media = a1.finish().await.unwrap();
        drop(a2);
        assert_eq!(spool.used_by("a"), 600);
        assert_eq!(spool.used(), 1100);
        let clone = media.clone();
        drop(media);
        assert_eq!(spool.used_by("a"), 600, "a clone keeps the file");
        drop(clone);
        assert_eq!(spool.used_by("a"), 0);
        assert_eq!(
            b.write(&[1; 1000], 10_000).await.unwrap(),
            Written::OverOwnerQuota
        );
        assert_eq!(b.write(&[1; 500], 10_000).await.unwrap(), Written::Done);
        drop(b);
        assert_eq!(spool.used(), 0);
        assert!(spool.ledger.lock().unwrap().owners.is_empty());
    }
}
