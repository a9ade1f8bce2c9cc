//! Store records read back from disk: the input overwrites or removes one record of a valid
//! sled database (collections, items, sequence numbers, vectors, content hashes, counters,
//! metadata), then the store is opened and read in full. Damaged records must give errors
//! (`corrupt` ones), never a panic.

use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use omnibind::store::{
    IndexParams, NewCollection, NewItem, PutOptions, SledStore, Store, MAX_PAGE,
};

/// A store with two collections, texts and content files, a delete behind it; written once.
fn template() -> &'static tempfile::TempDir {
    static T: OnceLock<tempfile::TempDir> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for name in ["photos", "notes"] {
            store
                .create_collection(NewCollection {
                    name: name.into(),
                    model: "m".into(),
                    dim: 3,
                    index: IndexParams::default(),
                    auto_tags: vec![],
                })
                .unwrap();
            let items = (0..4)
                .map(|i| NewItem {
                    id: (i % 2 == 0).then(|| format!("item-{i}")),
                    modality: if i < 2 { "text" } else { "image" }.into(),
                    content: Some(format!("content {name} {i}").into_bytes().into()),
                    content_type: Some("text/plain".into()),
                    text: Some(format!("text {i}")),
                    metadata: serde_json::json!({ "i": i }),
                    model: "m".into(),
                    weights_hash: "w".into(),
                    preprocess_version: "1".into(),
                    vector: vec![1.0, i as f32, 0.5],
                })
                .collect();
            store.put_items(name, items, PutOptions::default()).unwrap();
        }
        store.delete_item("notes", "item-2").unwrap();
        drop(store);
        dir
    })
}

/// Copies a directory tree. `fs::read` and `fs::write` retry a call that a signal interrupts
/// (libFuzzer's timeout alarm is one); `fs::copy` does not, and would fail the input.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::write(target, std::fs::read(entry.path())?)?;
        }
    }
    Ok(())
}

/// Copies the template into `work` and damages one record of it as `input` says.
fn damage(
    work: &Path,
    tree_pick: u8,
    key_pick: u8,
    op: u8,
    value: &[u8],
) -> Result<(), Box<dyn Error>> {
    copy_dir(template().path(), work)?;
    let db = sled::open(work.join("db"))?;
    let mut names = db.tree_names();
    names.sort();
    let tree = db.open_tree(&names[usize::from(tree_pick) % names.len()])?;
    let keys = tree.iter().keys().collect::<Result<Vec<sled::IVec>, _>>()?;
    match (op % 3, keys.is_empty()) {
        (0, false) => {
            tree.insert(&keys[usize::from(key_pick) % keys.len()], value)?;
        }
        (1, false) => {
            tree.remove(&keys[usize::from(key_pick) % keys.len()])?;
        }
        _ => {
            // A new key: the value's first bytes, the rest as its value.
            let split = usize::from(key_pick).min(value.len());
            tree.insert(&value[..split], &value[split..])?;
        }
    }
    db.flush()?;
    Ok(())
}

/// Every read the layers above make, on every collection and item.
fn read_everything(store: &SledStore) {
    let Ok(collections) = store.list_collections() else {
        return;
    };
    for c in collections {
        let name = c.name.as_str();
        let _ = store.get_collection(name);
        let _ = store.generation(name);
        let _ = store.modality_counts(name);
        if let Ok(vectors) = store.vectors(name) {
            for (seq, _) in vectors.take(100).flatten() {
                let _ = store.get_item_by_seq(name, seq);
                let _ = store.get_vector(name, seq);
            }
        }
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let Ok(page) = store.list_items(name, MAX_PAGE.min(3), cursor.as_deref()) else {
                break;
            };
            for item in &page.items {
                let _ = store.get_item(name, &item.id);
                if let Some(hash) = &item.content_hash {
                    let _ = store.read_content(name, hash);
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        // A write and a delete on top of the damage.
        let _ = store.delete_item(name, "item-0");
    }
}

/// One input, as the fuzz target and the corpus replay in the test suite feed it.
pub fn run(input: &[u8]) {
    let [tree_pick, key_pick, op, value @ ..] = input else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // The harness's own I/O failing (not omnibind's) is no finding: such an input is skipped.
    if damage(work.path(), *tree_pick, *key_pick, *op, value).is_err() {
        return;
    }
    if let Ok(store) = SledStore::open(work.path()) {
        read_everything(&store);
    }
}
