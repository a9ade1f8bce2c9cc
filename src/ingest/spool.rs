//! Uploaded files spooled to disk while they are received, so that a large or slow upload holds
//! a file, not memory: `<data_dir>/spool/`, one temp file per uploaded file, named by the
//! server (never by the client), deleted when the upload is done with it. Files left by a
//! crash are removed when the spool is opened.
//!
//! A spooled file becomes a [`Media::File`]: encoders read it when they decode it, and the store
//! hard-links it into its content directory (the spool sits in the data directory, so on the
//! same file system), so its bytes are neither held in memory for the whole request nor copied.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::embed::Media;

/// Size of the write buffer of a file being spooled.
const WRITE_BUFFER: usize = 256 * 1024;
const PREFIX: &str = "upload-";

/// The directory uploads are spooled to.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates `dir` when missing and removes what a previous process left in it.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
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
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new spooled file.
    pub fn create(&self) -> io::Result<SpoolFile> {
        let (file, path) = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempfile_in(&self.dir)?
            .into_parts();
        Ok(SpoolFile {
            file: tokio::io::BufWriter::with_capacity(
                WRITE_BUFFER,
                tokio::fs::File::from_std(file),
            ),
            path,
            len: 0,
        })
    }
}

/// A file being received; removed if dropped before [`SpoolFile::finish`].
pub struct SpoolFile {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: tempfile::TempPath,
    len: u64,
}

impl SpoolFile {
    /// Appends `chunk`, unless the file would grow over `limit` bytes (`Ok(false)`; nothing is
    /// written then).
    pub async fn write(&mut self, chunk: &[u8], limit: u64) -> io::Result<bool> {
        let len = self.len + chunk.len() as u64;
        if len > limit {
            return Ok(false);
        }
        self.file.write_all(chunk).await?;
        self.len = len;
        Ok(true)
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
            path: std::sync::Arc::new(self.path),
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
        let spool = Spool::open(tmp.path().join("spool")).unwrap();
        let mut f = spool.create().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in data.chunks(65_536) {
            assert!(f.write(chunk, 1 << 20).await.unwrap());
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
        let spool = Spool::open(tmp.path()).unwrap();
        let mut f = spool.create().unwrap();
        assert!(f.write(&[1; 600], 1000).await.unwrap());
        assert!(!f.write(&[2; 600], 1000).await.unwrap());
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
        let spool = Spool::open(tmp.path()).unwrap();
        assert!(names(spool.dir()).is_empty());
    }
}
