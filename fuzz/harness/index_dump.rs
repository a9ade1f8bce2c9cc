//! Index dumps read at start-up: the manifest, the flat index's vector file, the HNSW graph
//! file and the hnsw_rs id map. The input damages one file of a valid dump (replace, overwrite
//! at an offset, or cut) and may re-seal the checksums so the damage reaches the parsers behind
//! them; `load` must then give an index that answers searches, or an error.
//!
//! The graph files of the hnsw_rs kind (`*.hnsw.graph`, `*.hnsw.data`) are damaged but never
//! re-sealed: hnsw_rs's loader calls `process::exit` on some read errors, which no caller can
//! catch (SECURITY.md); the checksums are what keeps such files from reaching it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use omnibind::index::{load, new_index, reseal_dump, IndexConfig, IndexKind, SearchParams};

const DIM: usize = 4;

fn config() -> IndexConfig {
    IndexConfig {
        exact_threshold: 0,
        ..IndexConfig::default()
    }
}

/// Three valid dumps (flat, HNSW and hnsw_rs, with deletes behind them), written once.
fn templates() -> &'static (tempfile::TempDir, [PathBuf; 3]) {
    static T: OnceLock<(tempfile::TempDir, [PathBuf; 3])> = OnceLock::new();
    T.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let dirs = [IndexKind::Flat, IndexKind::Hnsw, IndexKind::HnswRs].map(|kind| {
            let dir = root.path().join(kind.to_string());
            let index = new_index(kind, DIM, &config()).unwrap();
            for id in 0..24u64 {
                let x = id as f32;
                index.insert(id, &[1.0, x, x.sin(), x.cos()]).unwrap();
            }
            index.delete(3);
            index.delete(11);
            index.save(&dir, 7).unwrap();
            dir
        });
        (root, dirs)
    })
}

fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    files.sort();
    Ok(files)
}

/// Copies `template` into `work` and damages one file as the input says; returns that file.
/// `fs::read` and `fs::write` retry a call that a signal interrupts (libFuzzer's timeout alarm
/// is one); `fs::copy` does not.
fn damage(
    template: &Path,
    work: &Path,
    [mode, pick, a, b]: [u8; 4],
    payload: &[u8],
) -> std::io::Result<PathBuf> {
    for f in files(template)? {
        std::fs::write(work.join(f.file_name().unwrap()), std::fs::read(&f)?)?;
    }
    let targets = files(work)?;
    let target = targets[usize::from(pick) % targets.len()].clone();
    let mut bytes = std::fs::read(&target)?;
    let offset = usize::from(u16::from_le_bytes([a, b]));
    match (mode >> 1) & 3 {
        0 => bytes = payload.to_vec(),
        1 | 3 => {
            let start = offset.min(bytes.len());
            let end = (start + payload.len()).min(bytes.len());
            bytes[start..end].copy_from_slice(&payload[..end - start]);
        }
        _ => bytes.truncate(offset),
    }
    std::fs::write(&target, &bytes)?;
    Ok(target)
}

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(input: &[u8]) {
    let [mode, pick, a, b, payload @ ..] = input else {
        return;
    };
    let (_, dirs) = templates();
    let template = &dirs[usize::from(mode & 1 | (mode >> 4) & 2) % 3];
    let work = tempfile::tempdir().unwrap();
    // The harness's own I/O failing (not omnibind's) is no finding: such an input is skipped.
    let Ok(target) = damage(template, work.path(), [*mode, *pick, *a, *b], payload) else {
        return;
    };
    let graph_file = target
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".hnsw."));
    if mode & 8 != 0 && !graph_file {
        let _ = reseal_dump(work.path());
    }
    if let Ok(loaded) = load(work.path(), &config()) {
        let index = loaded.index;
        let hits = index
            .search(&[1.0, 0.5, 0.25, 0.125], 5, &SearchParams::default(), None)
            .unwrap_or_default();
        assert!(hits.len() <= index.len().min(5));
        let _ = index.ids();
        if index.insert(1000, &[0.0, 1.0, 0.0, 0.0]).is_ok() {
            assert!(index.contains(1000));
        }
    }
}
