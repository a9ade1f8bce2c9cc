//! One test or more per operation and per error.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::super::{
    keys, sha256_hex, IndexParams, NewCollection, NewContent, OnExistingId, PutOptions, PutOutcome,
    Store, StoreError,
};
use super::{blob_path, files_under, item, new_collection, open, vector, DIM, MODEL};

fn put(store: &dyn Store, coll: &str, items: Vec<super::NewItem>) -> Vec<PutOutcome> {
    store
        .put_items(coll, items, PutOptions::default())
        .expect("put")
        .outcomes
}

fn replace() -> PutOptions {
    PutOptions {
        on_existing_id: OnExistingId::Replace,
        dedupe: true,
        incarnation: None,
    }
}

#[test]
fn store_is_object_safe_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Store>();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(dir.path()));
    store.create_collection(new_collection("c")).unwrap();
    assert_eq!(store.list_collections().unwrap().len(), 1);
}

#[test]
fn create_get_list_collections() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(s.list_collections().unwrap().is_empty());
    let mut nc = new_collection("beta");
    nc.index = IndexParams {
        m: 8,
        ef_construction: 100,
        ef_search: 40,
    };
    let created = s.create_collection(nc).unwrap();
    assert_eq!(created.name, "beta");
    assert_eq!(created.model, MODEL);
    assert_eq!(created.dim, DIM);
    assert_eq!(created.index.m, 8);
    assert_eq!(created.auto_tags, vec!["tag-a".to_string()]);
    assert_eq!(created.next_seq, 0);
    assert_eq!(created.generation, 1, "the first change of a new database");
    assert!(created.created_at > 1_600_000_000_000);
    let alpha = s.create_collection(new_collection("Alpha_1-x")).unwrap();
    assert_eq!(
        alpha.generation, 2,
        "generations come from one database-wide clock"
    );
    assert_eq!(s.get_collection("beta").unwrap(), created);
    let names: Vec<_> = s
        .list_collections()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Alpha_1-x", "beta"]);
}

#[test]
fn create_rejects_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let long = "a".repeat(65);
    for bad in ["", "a/b", "a.b", "a b", "../x", "é", "a\0b", long.as_str()] {
        let err = s.create_collection(new_collection(bad)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "collection name",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    s.create_collection(new_collection(&"a".repeat(64)))
        .unwrap();
    let mut nc = new_collection("d");
    nc.dim = 0;
    assert!(matches!(
        s.create_collection(nc).unwrap_err(),
        StoreError::Invalid { field: "dim", .. }
    ));
    let mut nc = new_collection("d");
    nc.index.m = 0;
    assert!(matches!(
        s.create_collection(nc).unwrap_err(),
        StoreError::Invalid { .. }
    ));
    let mut nc = new_collection("d");
    nc.model = String::new();
    assert!(matches!(
        s.create_collection(nc).unwrap_err(),
        StoreError::Invalid { field: "model", .. }
    ));
    let mut nc = new_collection("d");
    nc.auto_tags = vec!["a\nb".into()];
    assert!(matches!(
        s.create_collection(nc).unwrap_err(),
        StoreError::Invalid { .. }
    ));
    assert_eq!(s.list_collections().unwrap().len(), 1);
}

#[test]
fn create_existing_collection_fails_case_insensitively() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("Photos")).unwrap();
    for name in ["Photos", "photos", "PHOTOS"] {
        match s.create_collection(new_collection(name)).unwrap_err() {
            StoreError::CollectionExists(existing) => assert_eq!(existing, "Photos"),
            e => panic!("{e}"),
        }
    }
}

#[test]
fn unknown_collection_is_not_found_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let nf = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::CollectionNotFound(ref n)) if n == "nope"),
            "{r:?}"
        );
    };
    nf(s.get_collection("nope").map(drop));
    nf(s.delete_collection("nope").map(drop));
    nf(s.put_items(
        "nope",
        vec![item(None, "text", None, 1)],
        PutOptions::default(),
    )
    .map(drop));
    nf(s.get_item("nope", "x").map(drop));
    nf(s.get_item_by_seq("nope", 0).map(drop));
    nf(s.get_vector("nope", 0).map(drop));
    nf(s.delete_item("nope", "x").map(drop));
    nf(s.list_items("nope", 10, None).map(drop));
    nf(s.vectors("nope").map(drop));
    nf(s.modality_counts("nope").map(drop));
    nf(s.generation("nope").map(drop));
    nf(s.read_content("nope", &sha256_hex(b"x")).map(drop));
    assert!(matches!(
        s.get_collection("no/pe"),
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn put_then_get_by_id_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let mut with_text = item(Some("doc-1"), "text", None, 1);
    with_text.text = Some("a cat on a mat".into());
    with_text.metadata = json!({"lang": "en", "n": [1, 2]});
    let report = s
        .put_items(
            "c",
            vec![
                with_text,
                item(Some("img-1"), "image", Some(b"jpeg bytes"), 2),
            ],
            PutOptions::default(),
        )
        .unwrap();
    assert_eq!(
        report.outcomes,
        [
            PutOutcome::Inserted {
                id: "doc-1".into(),
                seq: 0
            },
            PutOutcome::Inserted {
                id: "img-1".into(),
                seq: 1
            },
        ]
    );
    assert_eq!(report.generation, 2);

    let doc = s.get_item("c", "doc-1").unwrap();
    assert_eq!(doc.seq, 0);
    assert_eq!(doc.modality, "text");
    assert_eq!(doc.text.as_deref(), Some("a cat on a mat"));
    assert_eq!(doc.metadata, json!({"lang": "en", "n": [1, 2]}));
    assert_eq!(doc.content_hash, None);
    assert_eq!(doc.content_len, 0);
    assert_eq!(
        (
            doc.model.as_str(),
            doc.weights_hash.as_str(),
            doc.preprocess_version.as_str()
        ),
        (MODEL, "w0", "1")
    );

    let img = s.get_item_by_seq("c", 1).unwrap();
    assert_eq!(img.id, "img-1");
    assert_eq!(
        img.content_hash.as_deref(),
        Some(sha256_hex(b"jpeg bytes").as_str())
    );
    assert_eq!(img.content_len, 10);
    assert_eq!(
        img.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(s.get_item("c", "img-1").unwrap(), img);
    assert_eq!(s.get_vector("c", 0).unwrap(), vector(1));
    assert_eq!(s.get_vector("c", 1).unwrap(), vector(2));

    let coll = s.get_collection("c").unwrap();
    assert_eq!((coll.next_seq, coll.generation), (2, 2));
    assert!(matches!(
        s.get_item("c", "zzz"),
        Err(StoreError::ItemNotFound { .. })
    ));
    assert!(matches!(
        s.get_item_by_seq("c", 2),
        Err(StoreError::SeqNotFound { seq: 2, .. })
    ));
    assert!(matches!(
        s.get_vector("c", 7),
        Err(StoreError::SeqNotFound { .. })
    ));
    assert!(matches!(
        s.get_item("c", "a/b"),
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn empty_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let r = s.put_items("c", vec![], PutOptions::default()).unwrap();
    assert!(r.outcomes.is_empty());
    assert_eq!(r.generation, 1);
    assert_eq!(s.generation("c").unwrap(), 1);
}

#[test]
fn generated_ids_follow_seq_and_avoid_taken_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    // A client took the id the next generated item would get (seq 1).
    let out = put(
        &s,
        "c",
        vec![
            item(None, "text", None, 1),
            item(Some("0000000000000001"), "text", None, 2),
        ],
    );
    assert_eq!(
        out[0],
        PutOutcome::Inserted {
            id: "0000000000000000".into(),
            seq: 0
        }
    );
    let out = put(
        &s,
        "c",
        vec![item(None, "text", None, 3), item(None, "text", None, 4)],
    );
    assert_eq!(
        out[0],
        PutOutcome::Inserted {
            id: "0000000000000002".into(),
            seq: 2
        }
    );
    assert_eq!(
        out[1],
        PutOutcome::Inserted {
            id: "0000000000000003".into(),
            seq: 3
        }
    );
    // seq 4 -> "0000000000000004" is free; make it taken by a later explicit id of the same batch.
    let out = put(
        &s,
        "c",
        vec![
            item(None, "text", None, 5),
            item(Some("0000000000000004"), "text", None, 6),
        ],
    );
    assert_eq!(
        out[0],
        PutOutcome::Inserted {
            id: "0000000000000004-1".into(),
            seq: 4
        }
    );
    assert_eq!(
        out[1],
        PutOutcome::Inserted {
            id: "0000000000000004".into(),
            seq: 5
        }
    );
}

#[test]
fn put_rejects_invalid_items() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let cases: Vec<(&str, super::NewItem)> = vec![
        ("item id", item(Some(""), "text", None, 1)),
        ("item id", item(Some("a/b"), "text", None, 1)),
        ("item id", item(Some("a\nb"), "text", None, 1)),
        ("item id", item(Some(&"x".repeat(129)), "text", None, 1)),
        // 65 two-byte characters: 130 bytes, over the limit of 128 bytes.
        ("item id", item(Some(&"é".repeat(65)), "text", None, 1)),
        // URLs resolve these as path segments: `/items/./content` is `/items/content`.
        ("item id", item(Some("."), "text", None, 1)),
        ("item id", item(Some(".."), "text", None, 1)),
        ("modality", item(None, "Text", None, 1)),
        ("modality", item(None, "", None, 1)),
        ("metadata", {
            let mut i = item(None, "text", None, 1);
            i.metadata = json!([1]);
            i
        }),
        ("model", {
            let mut i = item(None, "text", None, 1);
            i.model = "other".into();
            i
        }),
        ("vector", {
            let mut i = item(None, "text", None, 1);
            i.vector.push(0.0);
            i
        }),
        ("vector", {
            let mut i = item(None, "text", None, 1);
            i.vector[1] = f32::NAN;
            i
        }),
        ("vector", {
            let mut i = item(None, "text", None, 1);
            i.vector[0] = f32::INFINITY;
            i
        }),
        ("content type", {
            let mut i = item(None, "text", Some(b"x"), 1);
            i.content_type = Some("a\r\nb".into());
            i
        }),
    ];
    for (field, bad) in cases {
        let batch = vec![item(Some("ok"), "text", None, 0), bad];
        match s.put_items("c", batch, PutOptions::default()).unwrap_err() {
            StoreError::Invalid { field: f, reason } => {
                assert_eq!(f, field);
                assert!(reason.starts_with("item 1: "), "{reason}");
            }
            e => panic!("{field}: {e}"),
        }
    }
    // A 128-byte id of non-ASCII characters is fine, and so are dots inside an id.
    let id = "é".repeat(64);
    put(&s, "c", vec![item(Some(&id), "text", None, 1)]);
    assert_eq!(s.get_item("c", &id).unwrap().id, id);
    put(&s, "c", vec![item(Some("..."), "text", None, 2)]);
    assert_eq!(s.generation("c").unwrap(), 3);
    // Looking an id up stays as lenient as earlier versions were when they stored it (up to
    // 128 characters, dots alone), so items stored then can still be read and deleted.
    for old in ["é".repeat(128), ".".into()] {
        assert!(
            matches!(s.get_item("c", &old), Err(StoreError::ItemNotFound { .. })),
            "{old}"
        );
    }
}

/// A writer that looked a collection up, then spent a while preparing (embedding), must not
/// write into another collection of the same name created meanwhile.
#[test]
fn put_with_a_stale_incarnation_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let first = s.create_collection(new_collection("c")).unwrap();
    assert_ne!(first.incarnation, 0);
    assert_eq!(first.incarnation, first.generation);
    let at = |incarnation| PutOptions {
        incarnation: Some(incarnation),
        ..PutOptions::default()
    };
    // The incarnation stays while the collection changes.
    s.put_items(
        "c",
        vec![item(Some("a"), "text", None, 1)],
        at(first.incarnation),
    )
    .unwrap();
    assert_eq!(
        s.get_collection("c").unwrap().incarnation,
        first.incarnation
    );

    // Deleted and created again under the same name (and case-insensitively the same).
    s.delete_collection("c").unwrap();
    let second = s.create_collection(new_collection("c")).unwrap();
    assert_ne!(second.incarnation, first.incarnation);
    let generation = s.generation("c").unwrap();
    let stale = s.put_items(
        "c",
        vec![item(Some("b"), "image", Some(b"bytes"), 2)],
        at(first.incarnation),
    );
    assert!(
        matches!(stale, Err(StoreError::CollectionNotFound(ref n)) if n == "c"),
        "{stale:?}"
    );
    // Nothing written: no item, vector, counter, content file or new generation.
    assert_eq!(s.list_items("c", 10, None).unwrap().items, vec![]);
    assert_eq!(s.vectors("c").unwrap().count(), 0);
    assert!(s.modality_counts("c").unwrap().is_empty());
    assert_eq!(s.generation("c").unwrap(), generation);
    assert!(files_under(&dir.path().join("blobs")).is_empty());

    // The current incarnation writes; so does a put that names none.
    s.put_items(
        "c",
        vec![item(Some("b"), "text", None, 2)],
        at(second.incarnation),
    )
    .unwrap();
    put(&s, "c", vec![item(Some("d"), "text", None, 3)]);
    assert_eq!(s.modality_counts("c").unwrap()["text"], 2);
    // A third creation after a delete is yet another incarnation, and survives a reopen.
    s.delete_collection("c").unwrap();
    let third = s.create_collection(new_collection("c")).unwrap();
    assert!(third.incarnation > second.incarnation);
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        s.get_collection("c").unwrap().incarnation,
        third.incarnation
    );
}

/// Records written before collections had an incarnation read as incarnation 0.
#[test]
fn collection_records_without_an_incarnation_read_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let rec = s.create_collection(new_collection("c")).unwrap();
    let mut old = serde_json::to_value(&rec).unwrap();
    old.as_object_mut().unwrap().remove("incarnation");
    s.t.collections
        .insert(&b"c"[..], serde_json::to_vec(&old).unwrap())
        .unwrap();
    assert_eq!(s.get_collection("c").unwrap().incarnation, 0);
    let at_zero = PutOptions {
        incarnation: Some(0),
        ..PutOptions::default()
    };
    s.put_items("c", vec![item(None, "text", None, 1)], at_zero)
        .unwrap();
    assert_eq!(s.get_collection("c").unwrap().incarnation, 0);
}

#[test]
fn batch_failing_midway_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    put(
        &s,
        "c",
        vec![item(Some("existing"), "image", Some(b"old"), 0)],
    );
    let before = s.get_collection("c").unwrap();
    let files_before = files_under(dir.path().join("blobs").as_path());

    // Fails validation at the third item.
    let mut bad = item(Some("c3"), "image", Some(b"three"), 3);
    bad.vector.pop();
    let batch = vec![
        item(Some("c1"), "image", Some(b"one"), 1),
        item(None, "text", None, 2),
        bad,
    ];
    assert!(matches!(
        s.put_items("c", batch, PutOptions::default()),
        Err(StoreError::Invalid { .. })
    ));

    // Fails on an id conflict at the third item, after two valid items with content.
    let batch = vec![
        item(Some("c1"), "image", Some(b"one"), 1),
        item(None, "text", Some(b"two"), 2),
        item(Some("existing"), "image", Some(b"new"), 3),
    ];
    match s.put_items("c", batch, PutOptions::default()).unwrap_err() {
        StoreError::Conflict { id, .. } => assert_eq!(id, "existing"),
        e => panic!("{e}"),
    }

    assert_eq!(s.get_collection("c").unwrap(), before);
    assert_eq!(s.list_items("c", 100, None).unwrap().items.len(), 1);
    assert_eq!(
        s.modality_counts("c").unwrap(),
        BTreeMap::from([("image".into(), 1)])
    );
    assert_eq!(s.vectors("c").unwrap().count(), 1);
    assert!(matches!(
        s.get_item("c", "c1"),
        Err(StoreError::ItemNotFound { .. })
    ));
    assert_eq!(
        files_under(dir.path().join("blobs").as_path()),
        files_before
    );
    assert_eq!(s.t.seqs.len(), 1);
    assert_eq!(s.t.hashes.len(), 1);
}

#[test]
fn duplicate_id_within_batch_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let err = s
        .put_items(
            "c",
            vec![
                item(Some("x"), "text", None, 1),
                item(Some("x"), "text", None, 2),
            ],
            replace(),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref id, .. } if id == "x"),
        "{err}"
    );
    assert_eq!(s.generation("c").unwrap(), 1);
}

#[test]
fn existing_id_conflicts_or_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    put(&s, "c", vec![item(Some("x"), "image", Some(b"v1"), 1)]);
    let old_hash = sha256_hex(b"v1");
    assert!(blob_path(dir.path(), "c", &old_hash).is_file());

    let err = s
        .put_items(
            "c",
            vec![item(Some("x"), "image", Some(b"v2"), 2)],
            PutOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref id, .. } if id == "x"));

    let r = s
        .put_items(
            "c",
            vec![item(Some("x"), "audio", Some(b"v2"), 2)],
            replace(),
        )
        .unwrap();
    assert_eq!(
        r.outcomes,
        [PutOutcome::Replaced {
            id: "x".into(),
            seq: 1,
            old_seq: 0
        }]
    );
    let x = s.get_item("c", "x").unwrap();
    assert_eq!((x.seq, x.modality.as_str()), (1, "audio"));
    assert_eq!(x.content_hash.as_deref(), Some(sha256_hex(b"v2").as_str()));
    assert!(matches!(
        s.get_item_by_seq("c", 0),
        Err(StoreError::SeqNotFound { .. })
    ));
    assert!(matches!(
        s.get_vector("c", 0),
        Err(StoreError::SeqNotFound { .. })
    ));
    assert_eq!(s.get_vector("c", 1).unwrap(), vector(2));
    assert_eq!(
        s.modality_counts("c").unwrap(),
        BTreeMap::from([("audio".into(), 1)])
    );
    // The old content is no longer referenced: its file is gone.
    assert!(!blob_path(dir.path(), "c", &old_hash).exists());
    assert!(matches!(
        s.read_content("c", &old_hash),
        Err(StoreError::ContentNotFound { .. })
    ));
    assert_eq!(s.read_content("c", &sha256_hex(b"v2")).unwrap(), b"v2");

    // Replacing with the same content keeps the file and is not a duplicate of itself.
    let mut same = item(Some("x"), "audio", Some(b"v2"), 3);
    same.metadata = json!({"edited": true});
    let r = s.put_items("c", vec![same], replace()).unwrap();
    assert_eq!(
        r.outcomes,
        [PutOutcome::Replaced {
            id: "x".into(),
            seq: 2,
            old_seq: 1
        }]
    );
    assert_eq!(
        s.get_item("c", "x").unwrap().metadata,
        json!({"edited": true})
    );
    assert_eq!(s.read_content("c", &sha256_hex(b"v2")).unwrap(), b"v2");
    assert_eq!(
        s.vectors("c")
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        [2]
    );
}

#[test]
fn dedupe_reports_existing_item() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    s.create_collection(new_collection("other")).unwrap();
    put(&s, "c", vec![item(Some("a"), "image", Some(b"same"), 1)]);

    // Against stored items, and within one batch; a duplicate consumes no seq.
    let out = put(
        &s,
        "c",
        vec![
            item(Some("b"), "image", Some(b"same"), 2),
            item(None, "image", Some(b"fresh"), 3),
            item(Some("d"), "image", Some(b"fresh"), 4),
        ],
    );
    assert_eq!(
        out,
        [
            PutOutcome::Duplicate {
                id: "a".into(),
                seq: 0
            },
            PutOutcome::Inserted {
                id: "0000000000000001".into(),
                seq: 1
            },
            PutOutcome::Duplicate {
                id: "0000000000000001".into(),
                seq: 1
            },
        ]
    );
    assert!(matches!(
        s.get_item("c", "b"),
        Err(StoreError::ItemNotFound { .. })
    ));
    // Retrying an acknowledged put with the same id is idempotent, not a conflict.
    let out = put(&s, "c", vec![item(Some("a"), "image", Some(b"same"), 1)]);
    assert_eq!(
        out,
        [PutOutcome::Duplicate {
            id: "a".into(),
            seq: 0
        }]
    );
    // Dedupe is per collection.
    let out = put(
        &s,
        "other",
        vec![item(Some("b"), "image", Some(b"same"), 1)],
    );
    assert_eq!(
        out,
        [PutOutcome::Inserted {
            id: "b".into(),
            seq: 0
        }]
    );
    // Only duplicates: nothing changes.
    let gen = s.generation("c").unwrap();
    let r = s
        .put_items(
            "c",
            vec![item(None, "image", Some(b"same"), 9)],
            PutOptions::default(),
        )
        .unwrap();
    assert_eq!(r.generation, gen);
    assert_eq!(s.get_collection("c").unwrap().next_seq, 2);
}

#[test]
fn shared_content_file_lives_until_last_reference_goes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let no_dedupe = PutOptions {
        dedupe: false,
        ..PutOptions::default()
    };
    let r = s
        .put_items(
            "c",
            vec![
                item(Some("a"), "image", Some(b"shared"), 1),
                item(Some("b"), "image", Some(b"shared"), 2),
            ],
            no_dedupe,
        )
        .unwrap();
    assert!(matches!(r.outcomes[1], PutOutcome::Inserted { .. }));
    let h = sha256_hex(b"shared");
    let path = blob_path(dir.path(), "c", &h);
    s.delete_item("c", "a").unwrap();
    assert!(path.is_file(), "still referenced by b");
    assert_eq!(s.read_content("c", &h).unwrap(), b"shared");
    // A deduplicating put now finds b.
    let out = put(&s, "c", vec![item(None, "image", Some(b"shared"), 3)]);
    assert_eq!(
        out,
        [PutOutcome::Duplicate {
            id: "b".into(),
            seq: 1
        }]
    );
    s.delete_item("c", "b").unwrap();
    assert!(!path.exists());
}

#[test]
fn content_given_as_a_file_is_linked_into_place_hashed_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let src = dir.path().join("spooled-upload");
    std::fs::write(&src, &bytes).unwrap();
    let from_file = |id: &str, len: u64| {
        let mut it = item(Some(id), "image", None, 1);
        it.content = Some(NewContent::File {
            path: src.clone(),
            len,
        });
        it.content_type = Some("image/png".into());
        it
    };
    // A length that is not the file's is refused, and nothing is stored.
    let err = s
        .put_items("c", vec![from_file("x", 10)], PutOptions::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(files_under(&dir.path().join("blobs")).is_empty());

    put(&s, "c", vec![from_file("f", bytes.len() as u64)]);
    let h = sha256_hex(&bytes);
    let rec = s.get_item("c", "f").unwrap();
    assert_eq!(rec.content_hash.as_deref(), Some(h.as_str()));
    assert_eq!(rec.content_len, bytes.len() as u64);
    assert_eq!(s.read_content("c", &h).unwrap(), bytes);
    // The caller may delete its file once the put returned.
    std::fs::remove_file(&src).unwrap();
    assert_eq!(s.read_content("c", &h).unwrap(), bytes);
    // The same bytes from memory are a duplicate of the item stored from the file.
    let out = put(&s, "c", vec![item(None, "image", Some(&bytes), 2)]);
    assert_eq!(
        out,
        [PutOutcome::Duplicate {
            id: "f".into(),
            seq: 0
        }]
    );
}

#[test]
fn content_file_written_read_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    put(&s, "c", vec![item(Some("f"), "audio", Some(&bytes), 1)]);
    let h = sha256_hex(&bytes);
    let path = blob_path(dir.path(), "c", &h);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Only the content file, no temporary files left behind.
    assert_eq!(
        files_under(&dir.path().join("blobs")),
        [format!("c/{}/{h}", &h[..2])]
    );
    assert_eq!(s.read_content("c", &h).unwrap(), bytes);
    assert_eq!(s.content_path("c", &h).unwrap(), path);
    assert!(matches!(
        s.content_path("c", "../../etc/passwd"),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.content_path("c", &sha256_hex(b"nope")),
        Err(StoreError::ContentNotFound { .. })
    ));
    assert!(matches!(
        s.read_content("c", "../../etc/passwd"),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.read_content("c", &h.to_uppercase()),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.read_content("c", &sha256_hex(b"nope")),
        Err(StoreError::ContentNotFound { .. })
    ));

    let rec = s.delete_item("c", "f").unwrap();
    assert_eq!(rec.content_hash.as_deref(), Some(h.as_str()));
    assert!(!path.exists());
    assert!(matches!(
        s.read_content("c", &h),
        Err(StoreError::ContentNotFound { .. })
    ));

    // A referenced file that vanished is reported as corruption, not as absent content.
    put(&s, "c", vec![item(Some("g"), "audio", Some(b"gone"), 2)]);
    std::fs::remove_file(blob_path(dir.path(), "c", &sha256_hex(b"gone"))).unwrap();
    assert!(matches!(
        s.read_content("c", &sha256_hex(b"gone")),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        s.content_path("c", &sha256_hex(b"gone")),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn delete_item_removes_everything_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    put(
        &s,
        "c",
        vec![
            item(Some("a"), "image", Some(b"A"), 1),
            item(Some("b"), "text", None, 2),
        ],
    );
    let gen = s.generation("c").unwrap();
    let rec = s.delete_item("c", "a").unwrap();
    assert_eq!((rec.id.as_str(), rec.seq), ("a", 0));
    assert_eq!(s.generation("c").unwrap(), gen + 1);
    assert!(matches!(
        s.get_item("c", "a"),
        Err(StoreError::ItemNotFound { .. })
    ));
    assert!(matches!(
        s.get_item_by_seq("c", 0),
        Err(StoreError::SeqNotFound { .. })
    ));
    assert!(matches!(
        s.delete_item("c", "a"),
        Err(StoreError::ItemNotFound { .. })
    ));
    assert!(matches!(
        s.delete_item("c", "a/"),
        Err(StoreError::Invalid { .. })
    ));
    assert_eq!(
        s.modality_counts("c").unwrap(),
        BTreeMap::from([("text".into(), 1)])
    );
    assert_eq!(
        s.vectors("c")
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(s.t.hashes.len(), 0);
    // Sequence numbers are never reused.
    let out = put(&s, "c", vec![item(Some("a"), "image", Some(b"A"), 1)]);
    assert_eq!(
        out,
        [PutOutcome::Inserted {
            id: "a".into(),
            seq: 2
        }]
    );
}

#[test]
fn list_items_pages_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    // A neighbouring collection whose name extends this one must not leak into the listing.
    s.create_collection(new_collection("c-2")).unwrap();
    put(&s, "c-2", vec![item(Some("zz"), "text", None, 0)]);
    let ids: Vec<String> = (0..25).map(|i| format!("id{:02}", (i * 7) % 25)).collect();
    let batch = ids
        .iter()
        .map(|id| item(Some(id), "text", None, 1))
        .collect();
    put(&s, "c", batch);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list_items("c", 7, cursor.as_deref()).unwrap();
        pages += 1;
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);
    // Exactly one page when the limit covers everything.
    assert_eq!(s.list_items("c", 25, None).unwrap().next_cursor, None);
    assert!(matches!(
        s.list_items("c", 0, None),
        Err(StoreError::Invalid { field: "limit", .. })
    ));
    assert!(matches!(
        s.list_items("c", 10, Some("zz")),
        Err(StoreError::Invalid {
            field: "cursor",
            ..
        })
    ));
    assert!(matches!(
        s.list_items("c", 10, Some("2f")),
        Err(StoreError::Invalid {
            field: "cursor",
            ..
        })
    ));
}

#[test]
fn pagination_is_stable_under_deletes_and_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    let batch = (0..30)
        .map(|i| item(Some(&format!("k{i:02}")), "text", None, i))
        .collect();
    put(&s, "c", batch);
    let first = s.list_items("c", 10, None).unwrap();
    let last_of_first = first.items.last().unwrap().id.clone();
    assert_eq!(last_of_first, "k09");
    // Delete the cursor's own item, items already listed and items not yet listed.
    for id in ["k09", "k03", "k10", "k15", "k29"] {
        s.delete_item("c", id).unwrap();
    }
    // Insert one before and one after the cursor.
    put(
        &s,
        "c",
        vec![
            item(Some("k05a"), "text", None, 1),
            item(Some("k20a"), "text", None, 2),
        ],
    );
    let mut rest = Vec::new();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = s.list_items("c", 10, Some(&c)).unwrap();
        rest.extend(page.items.into_iter().map(|r| r.id));
        cursor = page.next_cursor;
    }
    let mut expected: Vec<String> = (10..30)
        .map(|i| format!("k{i:02}"))
        .filter(|id| !["k10", "k15", "k29"].contains(&id.as_str()))
        .collect();
    expected.push("k20a".into());
    expected.sort();
    assert_eq!(rest, expected);
}

#[test]
fn vectors_iterates_live_items_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    s.create_collection(new_collection("c2")).unwrap();
    let batch = (0..6)
        .map(|i| item(Some(&format!("i{i}")), "text", None, i))
        .collect();
    put(&s, "c", batch);
    put(&s, "c2", vec![item(Some("x"), "text", None, 99)]);
    s.delete_item("c", "i2").unwrap();
    s.put_items("c", vec![item(Some("i4"), "text", None, 40)], replace())
        .unwrap();
    let all: Vec<(u64, Vec<f32>)> = s.vectors("c").unwrap().map(Result::unwrap).collect();
    let seqs: Vec<u64> = all.iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, [0, 1, 3, 5, 6]);
    assert_eq!(all[4].1, vector(40));
    assert_eq!(all[0].1, vector(0));
}

#[test]
fn modality_counters_follow_puts_replaces_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    assert!(s.modality_counts("c").unwrap().is_empty());
    put(
        &s,
        "c",
        vec![
            item(Some("a"), "image", None, 1),
            item(Some("b"), "image", None, 2),
            item(Some("c"), "text", None, 3),
        ],
    );
    assert_eq!(
        s.modality_counts("c").unwrap(),
        BTreeMap::from([("image".into(), 2), ("text".into(), 1)])
    );
    s.put_items("c", vec![item(Some("a"), "depth", None, 4)], replace())
        .unwrap();
    s.delete_item("c", "c").unwrap();
    assert_eq!(
        s.modality_counts("c").unwrap(),
        BTreeMap::from([("depth".into(), 1), ("image".into(), 1)])
    );
}

#[test]
fn delete_collection_removes_items_vectors_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    s.create_collection(new_collection("keep")).unwrap();
    put(
        &s,
        "c",
        vec![
            item(Some("a"), "image", Some(b"A"), 1),
            item(None, "text", None, 2),
        ],
    );
    put(&s, "keep", vec![item(Some("a"), "image", Some(b"A"), 1)]);
    let rec = s.delete_collection("c").unwrap();
    assert_eq!(rec.name, "c");
    assert!(matches!(
        s.get_collection("c"),
        Err(StoreError::CollectionNotFound(_))
    ));
    assert!(!dir.path().join("blobs/c").exists());
    let prefix = keys::prefix("c");
    for tree in [
        &s.t.items,
        &s.t.seqs,
        &s.t.vectors,
        &s.t.hashes,
        &s.t.counts,
    ] {
        assert_eq!(tree.scan_prefix(&prefix).count(), 0);
    }
    assert!(s.t.purging.is_empty());
    // The other collection is untouched; the name is reusable and starts afresh.
    assert_eq!(s.get_item("keep", "a").unwrap().seq, 0);
    assert_eq!(s.read_content("keep", &sha256_hex(b"A")).unwrap(), b"A");
    let again = s.create_collection(new_collection("c")).unwrap();
    assert_eq!(again.next_seq, 0);
    // A recreated collection never repeats a generation of its earlier incarnation.
    assert!(again.generation > rec.generation);
    assert!(s.list_items("c", 10, None).unwrap().items.is_empty());
    assert!(s.modality_counts("c").unwrap().is_empty());
}

#[test]
fn reopen_after_drop_shows_all_data() {
    let dir = tempfile::tempdir().unwrap();
    let (before_items, before_colls, counts) = {
        let s = open(dir.path());
        s.create_collection(new_collection("c")).unwrap();
        s.create_collection(new_collection("d")).unwrap();
        let batch = (0..20)
            .map(|i| {
                let content = format!("content {i}");
                let modality = if i % 3 == 0 { "text" } else { "image" };
                item(
                    Some(&format!("i{i}")),
                    modality,
                    Some(content.as_bytes()),
                    i,
                )
            })
            .collect();
        put(&s, "c", batch);
        put(&s, "d", vec![item(None, "audio", Some(b"a"), 1)]);
        s.delete_item("c", "i5").unwrap();
        (
            s.list_items("c", 100, None).unwrap().items,
            s.list_collections().unwrap(),
            s.modality_counts("c").unwrap(),
        )
    };
    let s = open(dir.path());
    assert_eq!(
        s.open_report().found_format,
        Some(super::super::CURRENT_FORMAT)
    );
    assert!(s.open_report().migrations.is_empty());
    assert_eq!(s.open_report().gc, Default::default());
    assert_eq!(s.list_collections().unwrap(), before_colls);
    assert_eq!(s.list_items("c", 100, None).unwrap().items, before_items);
    assert_eq!(s.modality_counts("c").unwrap(), counts);
    for rec in &before_items {
        let k = rec.id[1..].parse::<u64>().unwrap();
        assert_eq!(s.get_vector("c", rec.seq).unwrap(), vector(k));
        let h = rec.content_hash.as_deref().unwrap();
        assert_eq!(
            s.read_content("c", h).unwrap(),
            format!("content {k}").as_bytes()
        );
    }
    // Sequence numbers continue where they stopped.
    let out = put(&s, "c", vec![item(None, "text", None, 1)]);
    assert_eq!(out[0].seq(), 20);
}

#[test]
fn gc_removes_orphans_and_keeps_referenced_files() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let h_live = sha256_hex(b"live");
    {
        let s = open(dir.path());
        s.create_collection(new_collection("c")).unwrap();
        put(&s, "c", vec![item(Some("a"), "image", Some(b"live"), 1)]);
        // What a crash between writing content files and committing leaves behind.
        let h_orphan = sha256_hex(b"orphan");
        let d = blobs.join("c").join(&h_orphan[..2]);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(&h_orphan), b"orphan").unwrap();
        std::fs::write(d.join(format!(".tmp-{h_orphan}-1-1")), b"orph").unwrap();
        std::fs::create_dir_all(blobs.join("gone/ab")).unwrap();
        std::fs::write(blobs.join("gone/ab/x"), b"x").unwrap();
        // What a crash while removing a deleted collection's files leaves behind.
        std::fs::create_dir_all(blobs.join(".trash-old-1-1/cd")).unwrap();
        std::fs::write(blobs.join(".trash-old-1-1/cd/y"), b"y").unwrap();
        let report = s.gc_blobs().unwrap();
        assert_eq!(
            (
                report.orphan_files,
                report.temp_files,
                report.stale_collection_dirs
            ),
            (1, 1, 2)
        );
        assert_eq!(
            files_under(&blobs),
            [format!("c/{}/{h_live}", &h_live[..2])]
        );
        // Leave another orphan for the gc at open.
        std::fs::create_dir_all(blobs.join("c/00")).unwrap();
        std::fs::write(blobs.join("c/00").join("0".repeat(64)), b"z").unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.open_report().gc.orphan_files, 1);
    assert_eq!(
        files_under(&blobs),
        [format!("c/{}/{h_live}", &h_live[..2])]
    );
    assert_eq!(s.read_content("c", &h_live).unwrap(), b"live");
}

#[test]
fn interrupted_collection_deletion_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create_collection(new_collection("c")).unwrap();
        put(&s, "c", vec![item(Some("a"), "image", Some(b"A"), 1)]);
        // The state right after the first commit of delete_collection.
        let rec = s.t.collections.remove("c").unwrap().unwrap();
        s.t.purging.insert("c", rec).unwrap();
        s.db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.open_report().purged, ["c".to_string()]);
    assert!(!dir.path().join("blobs/c").exists());
    assert!(s.t.items.is_empty() && s.t.vectors.is_empty() && s.t.hashes.is_empty());
    assert!(s.t.purging.is_empty());
    s.create_collection(new_collection("c")).unwrap();
}

#[test]
fn newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create_collection(new_collection("c")).unwrap();
        s.db.open_tree(keys::META)
            .unwrap()
            .insert(keys::FORMAT_VERSION_KEY, &99u32.to_le_bytes())
            .unwrap();
        s.db.flush().unwrap();
    }
    for _ in 0..2 {
        match super::super::SledStore::open(dir.path()) {
            Err(StoreError::UnsupportedFormat {
                found: 99,
                supported,
            }) => {
                assert_eq!(supported, super::super::CURRENT_FORMAT)
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a newer format"),
        }
    }
    let msg = StoreError::UnsupportedFormat {
        found: 99,
        supported: 2,
    }
    .to_string();
    assert!(msg.contains("99") && msg.contains("newer"), "{msg}");
}

#[test]
fn data_without_format_version_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = super::raw_sled(&dir.path().join("db"));
        db.open_tree(keys::COLLECTIONS)
            .unwrap()
            .insert("c", "{}")
            .unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        super::super::SledStore::open(dir.path()),
        Err(StoreError::Corrupt { tree: "meta", .. })
    ));
}

#[test]
fn corrupt_records_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    put(&s, "c", vec![item(Some("a"), "text", None, 1)]);
    s.t.items
        .insert(keys::item("c", "a"), &b"not json"[..])
        .unwrap();
    assert!(matches!(
        s.get_item("c", "a"),
        Err(StoreError::Corrupt { tree: "items", .. })
    ));
    s.t.vectors.insert(keys::seq("c", 0), &b"abc"[..]).unwrap();
    assert!(matches!(
        s.get_vector("c", 0),
        Err(StoreError::Corrupt {
            tree: "vectors",
            ..
        })
    ));
}

/// Damaged records at the end of their range: the clock, a counter and a collection's next
/// sequence number. Writing past them must give a corrupt-store error, never an overflow.
#[test]
fn records_at_their_maximum_are_corrupt_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    put(&s, "c", vec![item(Some("a"), "text", None, 1)]);
    let is_corrupt = |r: Result<_, StoreError>, want: &str| match r {
        Err(StoreError::Corrupt { tree, .. }) => assert_eq!(tree, want),
        other => panic!("expected a corrupt `{want}` tree, got {other:?}"),
    };
    let put_b = || {
        s.put_items(
            "c",
            vec![item(Some("b"), "text", None, 2)],
            PutOptions::default(),
        )
        .map(|_| ())
    };

    for big in [u64::MAX, i64::MAX as u64] {
        s.t.counts
            .insert(keys::count("c", "text"), &big.to_le_bytes())
            .unwrap();
        is_corrupt(put_b(), "counts");
    }
    s.t.counts
        .insert(keys::count("c", "text"), &1u64.to_le_bytes())
        .unwrap();

    let raw = s.t.collections.get("c").unwrap().unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    rec["next_seq"] = u64::MAX.into();
    s.t.collections
        .insert("c", serde_json::to_vec(&rec).unwrap())
        .unwrap();
    is_corrupt(put_b(), "collections");
    s.t.collections.insert("c", raw).unwrap();

    s.t.meta
        .insert(keys::CLOCK_KEY, &u64::MAX.to_le_bytes())
        .unwrap();
    is_corrupt(s.create_collection(new_collection("d")).map(|_| ()), "meta");
    is_corrupt(s.delete_item("c", "a").map(|_| ()), "meta");

    // Nothing was written by the refused calls.
    assert_eq!(s.get_item("c", "a").unwrap().id, "a");
    assert!(s.get_item("c", "b").is_err());
    assert_eq!(s.modality_counts("c").unwrap()["text"], 1);
}

#[test]
fn concurrent_writers_get_unique_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    s.create_collection(new_collection("c")).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..10 {
                    let id = format!("t{t}-{i}");
                    let content = id.clone();
                    let out = s
                        .put_items(
                            "c",
                            vec![item(Some(&id), "text", Some(content.as_bytes()), i)],
                            PutOptions::default(),
                        )
                        .unwrap();
                    seqs.push(out.outcomes[0].seq());
                }
                seqs
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert_eq!(s.generation("c").unwrap(), 21);
    assert_eq!(s.modality_counts("c").unwrap()["text"], 20);
}

#[test]
fn new_collection_round_trips_through_serde() {
    let nc = NewCollection {
        name: "n".into(),
        model: "m".into(),
        dim: 3,
        index: IndexParams::default(),
        auto_tags: vec![],
    };
    let v = serde_json::to_value(&nc).unwrap();
    assert_eq!(serde_json::from_value::<NewCollection>(v).unwrap(), nc);
}

#[test]
fn second_open_of_a_held_database_fails_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _held = open(dir.path());
    let opts = super::super::SledOptions {
        lock_wait: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    assert!(matches!(
        super::super::SledStore::open_with(dir.path(), opts),
        Err(StoreError::Locked { .. })
    ));
}

/// A long text is kept whole in its content file; its record keeps the first
/// `MAX_RECORD_TEXT` bytes, cut at a character boundary, and says so.
#[test]
fn long_texts_are_cut_in_records_and_kept_whole_as_content() {
    use super::super::MAX_RECORD_TEXT;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_collection(new_collection("c")).unwrap();
    // "é" is two bytes: with an odd prefix the cut falls inside one.
    let long = format!("x{}", "é".repeat(MAX_RECORD_TEXT));
    let short = "a short note".to_owned();
    let items = [("long", &long), ("short", &short)]
        .into_iter()
        .enumerate()
        .map(|(k, (id, text))| {
            let mut it = item(Some(id), "text", Some(text.as_bytes()), k as u64);
            it.text = Some(text.clone());
            it
        })
        .collect();
    put(&s, "c", items);

    let rec = s.get_item("c", "long").unwrap();
    let kept = rec.text.as_deref().unwrap();
    assert!(rec.text_truncated);
    assert_eq!(
        kept.len(),
        MAX_RECORD_TEXT - 1,
        "cut before the split character"
    );
    assert!(long.starts_with(kept));
    assert_eq!(rec.content_len, long.len() as u64);
    let hash = rec.content_hash.as_deref().unwrap();
    assert_eq!(s.read_content("c", hash).unwrap(), long.as_bytes());

    let rec = s.get_item("c", "short").unwrap();
    assert_eq!(rec.text.as_deref(), Some("a short note"));
    assert!(!rec.text_truncated);
    // Records without the flag (written before it existed) read as not cut.
    let json = serde_json::to_value(&rec).unwrap();
    assert!(json.get("text_truncated").is_none());
}
