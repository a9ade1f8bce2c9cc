//! Opening a format-1 database migrates it to the current format with all data readable.

use std::collections::BTreeMap;

use serde_json::json;

use super::super::{
    keys, migrate, sha256_hex, PutOptions, PutOutcome, SledStore, Store, CURRENT_FORMAT,
};
use super::{blob_path, item, v1, vector};

fn check_migrated(s: &SledStore, data_dir: &std::path::Path) {
    for (name, next_seq, generation) in v1::COLLECTIONS {
        let c = s.get_collection(name).unwrap();
        assert_eq!(
            (c.next_seq, c.generation),
            (*next_seq, *generation),
            "{name}"
        );
    }
    for it in v1::ITEMS {
        let rec = s.get_item(it.coll, it.id).unwrap();
        assert_eq!(rec.seq, it.seq);
        assert_eq!(rec.modality, it.modality);
        assert_eq!(rec.text.as_deref(), it.text);
        assert_eq!(rec.metadata, json!({"source": "v1"}));
        assert_eq!(s.get_item_by_seq(it.coll, it.seq).unwrap(), rec);
        assert_eq!(s.get_vector(it.coll, it.seq).unwrap(), vector(it.k));
        if let Some(c) = it.content {
            let h = sha256_hex(c);
            assert_eq!(rec.content_hash.as_deref(), Some(h.as_str()));
            assert_eq!(s.read_content(it.coll, &h).unwrap(), c);
            assert!(blob_path(data_dir, it.coll, &h).is_file());
        }
    }
    // Counters and the hash index were built by the migration.
    assert_eq!(
        s.modality_counts("photos").unwrap(),
        BTreeMap::from([("image".into(), 3), ("text".into(), 1)])
    );
    assert_eq!(
        s.modality_counts("sounds").unwrap(),
        BTreeMap::from([("audio".into(), 1)])
    );
    assert_eq!(s.t.hashes.len(), 4);
    let seqs: Vec<u64> = s.vectors("photos").unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(seqs, [0, 1, 3, 4]);
    let ids: Vec<String> = s
        .list_items("photos", 10, None)
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["caption", "cat", "dog", "dog-copy"]);
}

#[test]
fn format_1_database_is_migrated_and_fully_readable() {
    let dir = tempfile::tempdir().unwrap();
    v1::write(dir.path());
    {
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.open_report().found_format, Some(1));
        assert_eq!(s.open_report().migrations, [2]);
        // Every fixture file is referenced: gc removed nothing.
        assert_eq!(s.open_report().gc, Default::default());
        assert_eq!(migrate::read_version(&s.db).unwrap(), Some(CURRENT_FORMAT));
        check_migrated(&s, dir.path());

        // The new hash index serves dedupe and reference counting.
        let out = s
            .put_items(
                "photos",
                vec![item(None, "image", Some(b"cat-jpeg"), 1)],
                PutOptions::default(),
            )
            .unwrap()
            .outcomes;
        assert_eq!(
            out,
            [PutOutcome::Duplicate {
                id: "cat".into(),
                seq: 0
            }]
        );
        let dog = blob_path(dir.path(), "photos", &sha256_hex(b"dog-jpeg"));
        s.delete_item("photos", "dog").unwrap();
        assert!(dog.is_file(), "still referenced by dog-copy");
        s.delete_item("photos", "dog-copy").unwrap();
        assert!(!dog.exists());
        let out = s
            .put_items(
                "photos",
                vec![item(None, "text", None, 1)],
                PutOptions::default(),
            )
            .unwrap()
            .outcomes;
        assert_eq!(
            out[0].seq(),
            5,
            "sequence numbers continue after the migration"
        );
        // The clock starts after the largest format-1 generation (6): 7 and 8 were the two
        // deletes, 9 the put above.
        assert_eq!(s.generation("photos").unwrap(), 9);
        let r = s
            .put_items(
                "sounds",
                vec![item(None, "audio", None, 2)],
                PutOptions::default(),
            )
            .unwrap();
        assert_eq!(r.generation, 10);
    }
    // A second open finds the current format and migrates nothing.
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.open_report().found_format, Some(CURRENT_FORMAT));
    assert!(s.open_report().migrations.is_empty());
    assert_eq!(
        s.modality_counts("photos").unwrap(),
        BTreeMap::from([("image".into(), 1), ("text".into(), 2)])
    );
}

#[test]
fn interrupted_migration_reruns_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    v1::write(dir.path());
    {
        // What a crash half-way through the 1 -> 2 step leaves: version still 1, new trees
        // partly filled (here with wrong values).
        let db = super::raw_sled(&dir.path().join("db"));
        let hashes = db.open_tree(keys::HASHES).unwrap();
        hashes
            .insert(
                keys::hash_ref("photos", &sha256_hex(b"stale"), "ghost"),
                &7u64.to_be_bytes(),
            )
            .unwrap();
        db.open_tree(keys::COUNTS)
            .unwrap()
            .insert(keys::count("photos", "image"), &99u64.to_le_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.open_report().migrations, [2]);
    check_migrated(&s, dir.path());
}
