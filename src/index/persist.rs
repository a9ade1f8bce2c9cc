//! On-disk layout shared by both index kinds: checksummed files, the JSON manifest and the
//! crash-safe protocol that publishes a new dump.
//!
//! A dump directory holds one index:
//! - `manifest.json`: format version, kind, dimension, the caller's stamp and, for every data
//!   file, its name, length and XXH64 checksum. The manifest is the commit point: it is written
//!   to a temporary file, fsynced, renamed over the old one, and the directory is fsynced.
//! - data files with fresh names (`vectors-<tag>.bin`, `graph-<tag>.*`), written and fsynced
//!   before the manifest that names them. Files of earlier dumps are removed only after the
//!   new manifest is durable, so a crash at any point leaves the previous dump readable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{IndexError, IndexKind, Result};

/// Name of the manifest inside a dump directory.
pub(crate) const MANIFEST: &str = "manifest.json";
/// Value of the manifest's `format` field.
const FORMAT: &str = "omnibind-index";
/// Version of the dump layout this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Prefixes of the data files this module creates; only such files are ever deleted.
const OWNED_PREFIXES: [&str; 3] = ["vectors-", "graph-", "manifest.json.tmp-"];

// ---------------------------------------------------------------------------------------------
// XXH64
// ---------------------------------------------------------------------------------------------

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline(always)]
fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn xxh_merge(acc: u64, value: u64) -> u64 {
    (acc ^ xxh_round(0, value))
        .wrapping_mul(P1)
        .wrapping_add(P4)
}

#[inline(always)]
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// Streaming XXH64 (seed 0), the checksum stored in manifests.
///
/// Implemented here (about sixty lines, checked against the reference test vectors and, for
/// every length up to 2000 bytes, against the `twox-hash` crate) rather than pulled in as a
/// dependency; an optimised build hashes about 14 GB/s on the development machine.
#[derive(Debug, Clone)]
pub(crate) struct Xxh64 {
    total: u64,
    lanes: [u64; 4],
    buffer: [u8; 32],
    buffered: usize,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self {
            total: 0,
            lanes: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            buffer: [0; 32],
            buffered: 0,
        }
    }
}

impl Xxh64 {
    #[inline(always)]
    fn stripe(lanes: &mut [u64; 4], stripe: &[u8]) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = xxh_round(*lane, read_u64(&stripe[i * 8..]));
        }
    }

    pub(crate) fn update(&mut self, mut input: &[u8]) {
        self.total = self.total.wrapping_add(input.len() as u64);
        if self.buffered > 0 {
            let take = (32 - self.buffered).min(input.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&input[..take]);
            self.buffered += take;
            input = &input[take..];
            if self.buffered < 32 {
                return;
            }
            let buffer = self.buffer;
            Self::stripe(&mut self.lanes, &buffer);
            self.buffered = 0;
        }
        let mut stripes = input.chunks_exact(32);
        for stripe in &mut stripes {
            Self::stripe(&mut self.lanes, stripe);
        }
        let rest = stripes.remainder();
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub(crate) fn finish(&self) -> u64 {
        let [v1, v2, v3, v4] = self.lanes;
        let mut hash = if self.total >= 32 {
            let mut h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            for v in self.lanes {
                h = xxh_merge(h, v);
            }
            h
        } else {
            P5
        };
        hash = hash.wrapping_add(self.total);
        let mut rest = &self.buffer[..self.buffered];
        while rest.len() >= 8 {
            hash ^= xxh_round(0, read_u64(rest));
            hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            let word = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            hash ^= u64::from(word).wrapping_mul(P1);
            hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = &rest[4..];
        }
        for &byte in rest {
            hash ^= u64::from(byte).wrapping_mul(P5);
            hash = hash.rotate_left(11).wrapping_mul(P1);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(P2);
        hash ^= hash >> 29;
        hash = hash.wrapping_mul(P3);
        hash ^= hash >> 32;
        hash
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Name, length and checksum of one data file of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEntry {
    pub(crate) name: String,
    pub(crate) len: u64,
    /// XXH64 of the whole file, 16 lower-case hex digits.
    pub(crate) xxh64: String,
}

impl FileEntry {
    fn new(name: String, len: u64, hash: u64) -> Self {
        Self {
            name,
            len,
            xxh64: format!("{hash:016x}"),
        }
    }

    /// Path of the file in `dir`, refusing names that would leave the directory.
    pub(crate) fn path_in(&self, dir: &Path) -> Result<PathBuf> {
        let plain = !self.name.is_empty()
            && self.name != "."
            && self.name != ".."
            && !self.name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(corrupt(
                dir,
                format!("manifest names an invalid file {:?}", self.name),
            ));
        }
        Ok(dir.join(&self.name))
    }

    /// Checks that a file's length is the one recorded here.
    pub(crate) fn check_len(&self, dir: &Path, len: u64) -> Result<()> {
        if len != self.len {
            return Err(corrupt(
                dir,
                format!(
                    "{} is {len} bytes long, the manifest records {}",
                    self.name, self.len
                ),
            ));
        }
        Ok(())
    }

    /// Checks that a file's length and checksum are the ones recorded here.
    pub(crate) fn check(&self, dir: &Path, len: u64, hash: u64) -> Result<()> {
        self.check_len(dir, len)?;
        let got = format!("{hash:016x}");
        if got != self.xxh64 {
            return Err(corrupt(
                dir,
                format!(
                    "checksum of {} is {got}, the manifest records {}",
                    self.name, self.xxh64
                ),
            ));
        }
        Ok(())
    }

    /// Hashes the file on disk and checks it against this entry.
    pub(crate) fn verify(&self, dir: &Path) -> Result<()> {
        let path = self.path_in(dir)?;
        let mut reader = HashingReader::new(BufReader::with_capacity(
            1 << 20,
            File::open(&path).map_err(|e| io_error(&path, e))?,
        ));
        io::copy(&mut reader, &mut io::sink()).map_err(|e| io_error(&path, e))?;
        self.check(dir, reader.len(), reader.hash())
    }
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> IndexError {
    IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Xxh64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Xxh64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Xxh64::default(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.hasher.total
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// Creates `dir/name` (which must not exist), lets `fill` write it, fsyncs it, and returns its
/// manifest entry.
pub(crate) fn write_new_file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<FileEntry> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Xxh64::default(),
    };
    fill(&mut writer).map_err(|e| io_error(&path, e))?;
    writer.flush().map_err(|e| io_error(&path, e))?;
    let hasher = writer.hasher.clone();
    let file = writer
        .inner
        .into_inner()
        .map_err(|e| io_error(&path, e.into_error()))?;
    file.sync_all().map_err(|e| io_error(&path, e))?;
    Ok(FileEntry::new(
        name.to_owned(),
        hasher.total,
        hasher.finish(),
    ))
}

/// Opens the file `entry` names in `dir`, checks its length, lets `parse` read it (given the
/// file's length, to bound allocations before making them), then checks the checksum of what
/// was read.
pub(crate) fn read_checked<T>(
    dir: &Path,
    entry: &FileEntry,
    parse: impl FnOnce(&mut dyn Read, u64) -> Result<T, ReadError>,
) -> Result<T> {
    let path = entry.path_in(dir)?;
    let file = File::open(&path).map_err(|e| io_error(&path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(&path, e))?.len();
    entry.check_len(dir, file_len)?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let value = parse(&mut reader, file_len).map_err(|e| e.into_index_error(&path))?;
    entry.check(dir, reader.len(), reader.hash())?;
    Ok(value)
}

/// Fsyncs a file written by someone else (hnsw_rs) and returns its manifest entry.
pub(crate) fn seal_foreign_file(dir: &Path, name: &str) -> Result<FileEntry> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| io_error(&path, e))?;
    file.sync_all().map_err(|e| io_error(&path, e))?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    io::copy(&mut reader, &mut io::sink()).map_err(|e| io_error(&path, e))?;
    Ok(FileEntry::new(name.to_owned(), reader.len(), reader.hash()))
}

/// Fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// A name component that no earlier dump in this directory can have used.
pub(crate) fn unique_tag(stamp: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{stamp:x}-{nanos:x}-{:x}-{count:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Little-endian arrays
// ---------------------------------------------------------------------------------------------

pub(crate) fn write_u64s(w: &mut dyn Write, values: &[u64]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * 4096);
    for chunk in values.chunks(4096) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

pub(crate) fn write_f32s(w: &mut dyn Write, values: &[f32]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 * 8192);
    for chunk in values.chunks(8192) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Failure while decoding one of this module's own files.
pub(crate) enum ReadError {
    Io(io::Error),
    Invalid(String),
}

impl ReadError {
    pub(crate) fn into_index_error(self, path: &Path) -> IndexError {
        match self {
            ReadError::Io(e) => io_error(path, e),
            ReadError::Invalid(reason) => corrupt(path, reason),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Invalid("file is truncated".into())
        } else {
            ReadError::Io(e)
        }
    }
}

pub(crate) fn read_u64s(r: &mut dyn Read, count: usize) -> Result<Vec<u64>, ReadError> {
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; 8 * 4096];
    let mut left = count;
    while left > 0 {
        let n = left.min(4096);
        r.read_exact(&mut buf[..8 * n])?;
        out.extend(
            buf[..8 * n]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunk"))),
        );
        left -= n;
    }
    Ok(out)
}

pub(crate) fn read_f32s(r: &mut dyn Read, count: usize) -> Result<Vec<f32>, ReadError> {
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; 4 * 8192];
    let mut left = count;
    while left > 0 {
        let n = left.min(8192);
        r.read_exact(&mut buf[..4 * n])?;
        out.extend(
            buf[..4 * n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk"))),
        );
        left -= n;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

/// The commit record of a dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) version: u32,
    pub(crate) kind: IndexKind,
    pub(crate) dim: usize,
    /// Opaque value given by the caller at save time (a generation or an item count).
    pub(crate) stamp: u64,
    /// Number of live items.
    pub(crate) live: usize,
    /// Flat index: ids and vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vectors: Option<FileEntry>,
    /// hnsw_rs index: its graph dump and id map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) graph: Option<GraphSection>,
    /// HNSW index on the project's own graph: one file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hnsw: Option<HnswSection>,
    /// XXH64 of this manifest serialised with an empty `checksum`: a damaged manifest that
    /// still parses (a flipped digit in `stamp` or `dim`) is caught too.
    #[serde(default)]
    pub(crate) checksum: String,
}

/// The part of a manifest for the project's own HNSW graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HnswSection {
    pub(crate) m: usize,
    pub(crate) ef_construction: usize,
    /// Points in the graph, tombstoned ones included.
    pub(crate) points: usize,
    pub(crate) tombstones: usize,
    /// The graph file: vectors, links and ids.
    pub(crate) file: FileEntry,
}

/// The hnsw_rs part of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphSection {
    pub(crate) m: usize,
    pub(crate) ef_construction: usize,
    /// Points in the graph, tombstoned ones included.
    pub(crate) points: usize,
    pub(crate) tombstones: usize,
    /// Internal id -> external id map and tombstone flags.
    pub(crate) ids: FileEntry,
    /// hnsw_rs's own dump; absent when the graph has no point.
    pub(crate) dump: Option<GraphDump>,
}

/// The two files written by hnsw_rs's `file_dump`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphDump {
    pub(crate) basename: String,
    pub(crate) graph: FileEntry,
    pub(crate) data: FileEntry,
}

/// Just enough of a manifest to check its format and version before parsing the rest.
#[derive(Deserialize)]
struct ManifestHead {
    format: String,
    version: u32,
}

impl Manifest {
    pub(crate) fn new(kind: IndexKind, dim: usize, stamp: u64, live: usize) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            kind,
            dim,
            stamp,
            live,
            vectors: None,
            graph: None,
            hnsw: None,
            checksum: String::new(),
        }
    }

    /// The checksum this manifest should carry.
    fn compute_checksum(&self) -> String {
        let unsigned = Manifest {
            checksum: String::new(),
            ..self.clone()
        };
        // Serialising plain structs and strings cannot fail.
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        let mut hasher = Xxh64::default();
        hasher.update(&bytes);
        format!("{:016x}", hasher.finish())
    }

    /// The graph parameters (`m`, `ef_construction`) of a graph dump, whichever its kind.
    pub(crate) fn graph_params(&self) -> Option<(usize, usize)> {
        match (&self.hnsw, &self.graph) {
            (Some(section), _) => Some((section.m, section.ef_construction)),
            (_, Some(section)) => Some((section.m, section.ef_construction)),
            (None, None) => None,
        }
    }

    /// Names of the data files this manifest refers to.
    pub(crate) fn file_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Some(vectors) = &self.vectors {
            names.push(vectors.name.clone());
        }
        if let Some(hnsw) = &self.hnsw {
            names.push(hnsw.file.name.clone());
        }
        if let Some(graph) = &self.graph {
            names.push(graph.ids.name.clone());
            if let Some(dump) = &graph.dump {
                names.push(dump.graph.name.clone());
                names.push(dump.data.name.clone());
            }
        }
        names
    }

    /// Parses manifest bytes without any check, to forge damaged manifests in tests.
    #[cfg(test)]
    pub(crate) fn read_unchecked(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).expect("a manifest")
    }

    /// Reads and checks `dir/manifest.json`.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
        let head: ManifestHead = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&path, format!("unreadable manifest: {e}")))?;
        if head.format != FORMAT {
            return Err(corrupt(
                &path,
                format!("not an index manifest (format {:?})", head.format),
            ));
        }
        if head.version != FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion {
                found: head.version,
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&path, format!("unreadable manifest: {e}")))?;
        if manifest.checksum != manifest.compute_checksum() {
            return Err(corrupt(&path, "manifest checksum mismatch"));
        }
        if manifest.dim == 0 {
            return Err(corrupt(&path, "manifest records dimension 0"));
        }
        let sections = (
            manifest.vectors.is_some(),
            manifest.hnsw.is_some(),
            manifest.graph.is_some(),
        );
        let consistent = match manifest.kind {
            IndexKind::Flat => sections == (true, false, false),
            IndexKind::Hnsw => sections == (false, true, false),
            IndexKind::HnswRs => sections == (false, false, true),
        };
        if !consistent {
            return Err(corrupt(&path, "manifest sections do not match its kind"));
        }
        Ok(manifest)
    }

    /// Publishes this manifest in `dir` atomically and durably, then removes the files of
    /// earlier dumps.
    pub(crate) fn publish(&self, dir: &Path) -> Result<()> {
        let signed = Manifest {
            checksum: self.compute_checksum(),
            ..self.clone()
        };
        let json = serde_json::to_vec_pretty(&signed).map_err(|e| IndexError::Io {
            path: dir.join(MANIFEST),
            source: io::Error::other(e),
        })?;
        let tmp_name = format!("{MANIFEST}.tmp-{}", unique_tag(self.stamp));
        let tmp = dir.join(&tmp_name);
        write_new_file(dir, &tmp_name, |w| w.write_all(&json))?;
        let target = dir.join(MANIFEST);
        fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
        sync_dir(dir)?;
        remove_unreferenced(dir, &self.file_names());
        Ok(())
    }
}

/// Recomputes the length and checksum of every file the manifest in `dir` names from the
/// files present, then republishes the manifest with its own checksum. A damaged dump then
/// passes the checksum checks, so fuzzing reaches the parsers behind them.
pub(crate) fn reseal(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
    let mut manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(&path, format!("unreadable manifest: {e}")))?;
    let refresh = |entry: &mut FileEntry| -> Result<()> {
        let file = entry.path_in(dir)?;
        let data = fs::read(&file).map_err(|e| io_error(&file, e))?;
        let mut hasher = Xxh64::default();
        hasher.update(&data);
        *entry = FileEntry::new(entry.name.clone(), data.len() as u64, hasher.finish());
        Ok(())
    };
    if let Some(vectors) = &mut manifest.vectors {
        refresh(vectors)?;
    }
    if let Some(hnsw) = &mut manifest.hnsw {
        refresh(&mut hnsw.file)?;
    }
    if let Some(graph) = &mut manifest.graph {
        refresh(&mut graph.ids)?;
        if let Some(dump) = &mut graph.dump {
            refresh(&mut dump.graph)?;
            refresh(&mut dump.data)?;
        }
    }
    manifest.publish(dir)
}

/// Deletes files created by this module that `keep` does not name. Failures are logged only:
/// a leftover file costs disk space, never correctness.
pub(crate) fn remove_unreferenced(dir: &Path, keep: &[String]) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list index directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let owned = OWNED_PREFIXES.iter().any(|p| name.starts_with(p));
        if owned && !keep.iter().any(|k| k == name) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove old index file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xxh64(bytes: &[u8]) -> u64 {
        let mut h = Xxh64::default();
        h.update(bytes);
        h.finish()
    }

    #[test]
    fn xxh64_matches_reference_vectors() {
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        // Longer inputs take the four-lane path; values computed with the twox-hash crate.
        let counting: Vec<u8> = (0..100u8).collect();
        assert_eq!(xxh64(&counting), 0x6AC1_E580_3216_6597);
        let pattern: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(xxh64(&pattern), 0xD1BE_E8E4_F060_3BBF);
    }

    #[test]
    fn xxh64_streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = xxh64(&data);
        for split in [1usize, 3, 31, 32, 33, 64, 100, 999] {
            let mut h = Xxh64::default();
            for chunk in data.chunks(split) {
                h.update(chunk);
            }
            assert_eq!(h.finish(), whole, "split {split}");
        }
    }
}
