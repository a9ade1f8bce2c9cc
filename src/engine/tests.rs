//! Engine tests on the tiny CLIP fixture: uploads, searches, and index recovery across restarts.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::config::{Overrides, Settings};
use crate::embed::ModelSpec;

fn settings(dir: &Path) -> Settings {
    let mut s = Settings::load(
        None,
        &Overrides {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip/models/clip-tiny-quickgelu");
    let mut spec = ModelSpec::new("tiny", model.to_str().unwrap());
    spec.device = crate::embed::DeviceSpec::Cpu;
    s.models = vec![spec];
    s
}

fn open(dir: &Path) -> Engine {
    let s = settings(dir);
    Engine::open(&s, Registry::load(&s.models).unwrap()).unwrap()
}

fn text(t: &str, meta: serde_json::Value) -> NewInput {
    NewInput {
        id: None,
        content: Content::Text(t.into()),
        metadata: meta,
    }
}

fn query(t: &str, k: usize) -> SearchRequest {
    SearchRequest {
        terms: vec![(QueryTerm::Text(t.into()), 1.0)],
        k,
        offset: 0,
        filter: None,
        min_score: None,
        exact: false,
        ef_search: None,
    }
}

const TEXTS: [&str; 6] = [
    "a dog",
    "a cat",
    "a red car",
    "two birds",
    "the sea",
    "a mountain",
];

async fn filled(dir: &Path) -> Engine {
    let e = open(dir);
    e.create_collection(CreateCollection {
        name: "c".into(),
        model: "tiny".into(),
        hnsw: None,
        auto_tags: vec![],
    })
    .unwrap();
    let items = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| text(t, json!({"i": i, "even": i % 2 == 0})))
        .collect();
    let st = e.add_items("c", items).await.unwrap();
    assert!(st
        .iter()
        .all(|s| s.status == "created" && s.modality == "text"));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_text_finds_itself_first_and_filters_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    for t in TEXTS {
        let hits = e.search("c", query(t, 3)).await.unwrap();
        assert_eq!(
            e.get_item("c", &hits[0].id).unwrap().text.as_deref(),
            Some(t)
        );
        assert!(hits[0].score > 0.9999);
    }
    let mut q = query("a dog", 10);
    q.filter = Some(serde_json::from_value(json!({"metadata": {"even": false}})).unwrap());
    let hits = e.search("c", q).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.metadata["even"] == false));
    // Duplicate content is reported, not stored twice.
    let st = e
        .add_items("c", vec![text("a dog", json!({}))])
        .await
        .unwrap();
    assert_eq!(st[0].status, "duplicate");
    assert_eq!(e.get_collection("c").unwrap().total, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_terms_are_a_normalised_sum() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    let dog = e.search("c", query("a dog", 1)).await.unwrap()[0]
        .id
        .clone();
    let mut q = query("a cat", 6);
    q.terms = vec![
        (QueryTerm::Item(dog.clone()), 1.0),
        (QueryTerm::Text("a cat".into()), 1.0),
    ];
    q.exact = true;
    let hits = e.search("c", q).await.unwrap();
    // Expected: cosine with normalise(v_dog + v_cat), computed here from the stored vectors.
    let v = |id: &str| {
        e.store
            .get_vector("c", e.store.get_item("c", id).unwrap().seq)
            .unwrap()
    };
    let cat = hits
        .iter()
        .find(|h| e.get_item("c", &h.id).unwrap().text.as_deref() == Some("a cat"))
        .unwrap();
    let (a, b) = (v(&dog), v(&cat.id));
    let mut sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    crate::embed::l2_normalize(&mut sum);
    for h in &hits {
        let x = v(&h.id);
        let want: f32 = sum.iter().zip(&x).map(|(p, q)| p * q).sum();
        assert!((h.score - want).abs() < 1e-5, "{} vs {want}", h.score);
    }
    // Terms that cancel out are refused.
    let mut q = query("a dog", 3);
    q.terms.push((QueryTerm::Text("a dog".into()), -1.0));
    assert_eq!(e.search("c", q).await.unwrap_err().code(), "invalid_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_fresh_dumps_and_rebuilds_stale_or_corrupt_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let before = {
        let e = filled(tmp.path()).await;
        e.persist_indexes().await.unwrap();
        // A write after the dump makes it stale.
        e.add_items("c", vec![text("a green lizard", json!({}))])
            .await
            .unwrap();
        e.search("c", query("a green lizard", 7)).await.unwrap()
    };
    let dump = tmp.path().join("index/c");
    assert!(dump.join("manifest.json").exists());
    let e = open(tmp.path());
    assert_eq!(
        e.search("c", query("a green lizard", 7)).await.unwrap(),
        before
    );
    e.persist_indexes().await.unwrap();
    drop(e);
    // A fresh dump loads; a corrupted one is rebuilt from the store, without a panic.
    let e = open(tmp.path());
    assert_eq!(
        e.search("c", query("a green lizard", 7)).await.unwrap(),
        before
    );
    drop(e);
    std::fs::write(dump.join("manifest.json"), b"{ not json").unwrap();
    let e = open(tmp.path());
    assert_eq!(
        e.search("c", query("a green lizard", 7)).await.unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_files_are_recognised_from_disk_and_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    let spooled = |bytes: &[u8]| {
        let mut f = e.spool().create("test").unwrap();
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            rt.block_on(async {
                f.write(bytes, u64::MAX).await.unwrap();
                f.finish().await.unwrap()
            })
        })
    };
    let input = |bytes: Media| NewInput {
        id: None,
        content: Content::File {
            bytes,
            modality: None,
        },
        metadata: json!({}),
    };
    // A text longer than the bytes read to recognise binary formats, with a two-byte character
    // across that boundary: recognised from the whole file.
    let mut text = "a".repeat(DETECT_HEAD - 1);
    text.push_str("é and more text after the first bytes");
    assert!(!text.is_char_boundary(DETECT_HEAD));
    let st = e
        .add_items("c", vec![input(spooled(text.as_bytes()))])
        .await
        .unwrap();
    assert_eq!(
        (st[0].modality.as_str(), st[0].status.as_str()),
        ("text", "created")
    );
    let crate::engine::ItemContent::File { path, .. } =
        e.item_content_source("c", &st[0].id).unwrap()
    else {
        panic!("a spooled text keeps its original file");
    };
    assert_eq!(std::fs::read(path).unwrap(), text.as_bytes());
    // The text read from the file is the item's text (its record keeps the first 4 KiB).
    let view = e.get_item("c", &st[0].id).unwrap();
    let kept = view.text.unwrap();
    assert!(
        view.text_truncated && kept.len() >= DETECT_HEAD - 4,
        "{}",
        kept.len()
    );
    assert!(text.starts_with(&kept));
    // Binary content past the first bytes makes a file that starts like text unsupported.
    let mut not_text = "b".repeat(DETECT_HEAD * 2).into_bytes();
    not_text.push(0);
    let err = e
        .add_items("c", vec![input(spooled(&not_text))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unsupported_media_type");
    // Every spool file is gone once nothing holds it.
    assert_eq!(std::fs::read_dir(e.spool().dir()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_have_stable_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    let file = |b: &[u8]| NewInput {
        id: None,
        content: Content::File {
            bytes: b.to_vec().into(),
            modality: None,
        },
        metadata: json!({}),
    };
    let code = |r: Result<Vec<ItemStatus>>| r.unwrap_err().code();
    assert_eq!(code(e.add_items("c", vec![file(b"")]).await), "empty_file");
    assert_eq!(
        code(e.add_items("c", vec![file(b"\x00\x01binary")]).await),
        "unsupported_media_type"
    );
    assert_eq!(
        code(
            e.add_items("c", vec![file(b"\xFF\xD8\xFF\xE0\x00\x10JFIF")])
                .await
        ),
        "invalid_media"
    );
    assert_eq!(
        code(e.add_items("nope", vec![text("x", json!({}))]).await),
        "collection_not_found"
    );
    let vec_item = |v: Vec<f32>| NewInput {
        id: None,
        content: Content::Vector(v),
        metadata: json!({}),
    };
    assert_eq!(
        code(e.add_items("c", vec![vec_item(vec![0.1; 3])]).await),
        "wrong_dimension"
    );
    assert_eq!(
        code(e.add_items("c", vec![vec_item(vec![f32::NAN; 16])]).await),
        "non_finite_vector"
    );
    // All or nothing: a bad item in a batch stores nothing.
    let err = e
        .add_items("c", vec![text("fine", json!({})), file(b"")])
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("item 1:"), "{err}");
    // A failure found while embedding names the input's place in the request, not in the
    // encoder batch (the vector item is not embedded).
    let err = e
        .add_items(
            "c",
            vec![
                vec_item(vec![0.1; 16]),
                text("fine too", json!({})),
                file(b"\xFF\xD8\xFF\xE0\x00\x10JFIF"),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_media");
    assert!(err.to_string().starts_with("item 2:"), "{err}");
    assert_eq!(e.get_collection("c").unwrap().total, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tags_store_the_top_labels_and_are_filterable() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let labels: Vec<String> = ["dog", "cat", "car", "tree", "boat"]
        .map(String::from)
        .to_vec();
    e.create_collection(CreateCollection {
        name: "t".into(),
        model: "tiny".into(),
        hnsw: None,
        auto_tags: labels.clone(),
    })
    .unwrap();
    let st = e
        .add_items("t", vec![text("a small boat at sea", json!({"k": 1}))])
        .await
        .unwrap();
    let item = e.get_item("t", &st[0].id).unwrap();
    // The stored tags are the classifier's top three for the same input, in order.
    let ranked = e
        .classify(
            "tiny",
            QueryTerm::Text("a small boat at sea".into()),
            labels,
            None,
        )
        .await
        .unwrap();
    let want: Vec<&str> = ranked
        .iter()
        .take(AUTO_TAGS_TOP)
        .map(|l| l.label.as_str())
        .collect();
    assert_eq!(item.metadata["tags"], json!(want));
    assert_eq!(item.metadata["k"], 1);
    let mut q = query("anything", 5);
    q.filter = Some(serde_json::from_value(json!({"metadata": {"tags": want[0]}})).unwrap());
    assert_eq!(e.search("t", q).await.unwrap().len(), 1);
    let mut q = query("anything", 5);
    let absent = ["dog", "cat", "car", "tree", "boat"]
        .into_iter()
        .find(|l| !want.contains(l))
        .unwrap();
    q.filter = Some(serde_json::from_value(json!({"metadata": {"tags": absent}})).unwrap());
    assert!(e.search("t", q).await.unwrap().is_empty());
}

/// Waits (bounded) until the encoder queue holds `n` jobs.
async fn queue_depth_reaches(e: &Engine, n: usize) {
    for _ in 0..1000 {
        if e.queue().depth() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the encoder queue never held {n} jobs");
}

fn new_c() -> CreateCollection {
    CreateCollection {
        name: "c".into(),
        model: "tiny".into(),
        hnsw: None,
        auto_tags: vec![],
    }
}

/// An upload looks its collection up, embeds, then commits. A collection deleted and created
/// again under the same name in between must not receive the items: they would be stored in
/// the new collection while only the old one's index (gone) learnt of them, acknowledged yet
/// never searchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_racing_a_recreated_collection_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Arc::new(filled(tmp.path()).await);
    // Hold the encoder's only worker, so the upload waits between its lookup and its commit.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let e = e.clone();
        tokio::spawn(async move { e.queue().run(move || held.recv()).await })
    };
    queue_depth_reaches(&e, 1).await;
    let upload = {
        let e = e.clone();
        tokio::spawn(async move {
            e.add_items(
                "c",
                vec![text("a red fox", json!({})), text("blue sky", json!({}))],
            )
            .await
        })
    };
    queue_depth_reaches(&e, 2).await;
    e.delete_collection("c").await.unwrap();
    e.create_collection(new_c()).unwrap();
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap().unwrap();
    let err = upload.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "collection_not_found", "{err}");
    let info = e.get_collection("c").unwrap();
    assert_eq!((info.total, info.index.len), (0, 0));
    // The new collection takes the same upload, and finds what it stored.
    e.add_items("c", vec![text("a red fox", json!({}))])
        .await
        .unwrap();
    let info = e.get_collection("c").unwrap();
    assert_eq!((info.total, info.index.len), (1, 1));
    assert_eq!(e.search("c", query("a red fox", 1)).await.unwrap().len(), 1);
}

/// Metadata is held in memory for filters: each item's, and an upload's in total, are bounded
/// before anything is embedded or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_its_limits_is_refused_before_anything_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    let limits = *e.metadata_limits();
    assert_eq!(
        (
            limits.max_item_bytes,
            limits.max_request_bytes,
            limits.max_depth
        ),
        (65_536, 4_194_304, 32)
    );
    let code = |r: Result<Vec<ItemStatus>>| r.unwrap_err();
    // One item: a 70 KB string, or a 1,000,000-element array (2 MB of JSON).
    let err = code(
        e.add_items(
            "c",
            vec![
                text("fine", json!({})),
                text("big", json!({"s": "x".repeat(70_000)})),
            ],
        )
        .await,
    );
    assert_eq!(err.code(), "payload_too_large");
    assert!(
        err.to_string().starts_with("item 1: metadata is over"),
        "{err}"
    );
    let err = code(
        e.add_items("c", vec![text("array", json!({"a": vec![0u8; 1_000_000]}))])
            .await,
    );
    assert_eq!(err.code(), "payload_too_large");
    // Many items, each under the per-item limit, over the request's total.
    let items = (0..70)
        .map(|i| text(&format!("t{i}"), json!({"s": "x".repeat(60_000)})))
        .collect();
    let err = code(e.add_items("c", items).await);
    assert_eq!(err.code(), "payload_too_large");
    assert!(err.to_string().contains("per request"), "{err}");
    // Nesting deeper than the limit.
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let err = code(
        e.add_items("c", vec![text("deep", json!({ "d": deep }))])
            .await,
    );
    assert_eq!(err.code(), "invalid_metadata");
    assert_eq!(e.get_collection("c").unwrap().total, 6);
    // At the limits, accepted.
    let mut ok = json!(1);
    for _ in 0..31 {
        ok = json!([ok]);
    }
    let st = e
        .add_items(
            "c",
            vec![text("nested", json!({ "d": ok, "s": "y".repeat(60_000) }))],
        )
        .await
        .unwrap();
    assert_eq!(st[0].status, "created");
}

/// A vector is checked by one rule whether it is stored or searched with: what an upload
/// accepts can be searched, and what a search refuses an upload refuses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_and_query_vectors_pass_the_same_check() {
    let tmp = tempfile::tempdir().unwrap();
    let e = filled(tmp.path()).await;
    let dim = e.get_collection("c").unwrap().dim;
    let vec_item = |id: &str, v: Vec<f32>| NewInput {
        id: Some(id.into()),
        content: Content::Vector(v),
        metadata: json!({}),
    };
    // Components whose squares overflow f32, and subnormal ones whose squares underflow it.
    let mut huge = vec![1e38f32; dim];
    huge[0] = -1e38;
    let mut tiny = vec![1e-45f32; dim];
    tiny[1] = -1e-45;
    tiny[2] = 3e-45;
    for (id, v) in [("huge", huge), ("tiny", tiny)] {
        e.add_items("c", vec![vec_item(id, v.clone())])
            .await
            .unwrap();
        let mut q = query("", 1);
        q.terms = vec![(QueryTerm::Vector(v), 1.0)];
        q.exact = true;
        let hits = e.search("c", q).await.unwrap();
        assert_eq!(hits[0].id, id);
        assert!(hits[0].score > 0.999, "{id}: {}", hits[0].score);
        // A large weight does not overflow the query either.
        let mut q = query("", 1);
        q.terms = vec![(QueryTerm::Item(id.into()), 1e38)];
        assert_eq!(e.search("c", q).await.unwrap()[0].id, id);
    }
    // A zero vector can be neither: refused at upload with the search's code, nothing stored.
    let total = e.get_collection("c").unwrap().total;
    let err = e
        .add_items("c", vec![vec_item("zero", vec![0.0; dim])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "zero_vector", "{err}");
    assert_eq!(e.get_collection("c").unwrap().total, total);
    let mut q = query("", 1);
    q.terms = vec![(QueryTerm::Vector(vec![0.0; dim]), 1.0)];
    assert_eq!(e.search("c", q).await.unwrap_err().code(), "zero_vector");
}

/// HNSW settings are checked as given: a value above 2^32 is refused, not wrapped into range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_settings_out_of_range_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let with = |m, ef_construction, ef_search| CreateCollection {
        hnsw: Some(HnswParams {
            m,
            ef_construction,
            ef_search,
        }),
        ..new_c()
    };
    let big = 1usize << 32;
    for req in [
        with(Some(big + 16), None, None),
        with(None, Some(big + 200), None),
        with(None, None, Some(big + 64)),
        with(None, Some(crate::index::MAX_EF + 1), None),
        with(None, None, Some(0)),
    ] {
        let err = e.create_collection(req.clone()).unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{req:?}: {err}");
    }
    assert!(e.list_collections().unwrap().is_empty());
    let info = e
        .create_collection(with(Some(32), Some(4096), Some(4096)))
        .unwrap();
    assert_eq!(
        (
            info.index.m,
            info.index.ef_construction,
            info.index.ef_search
        ),
        (32, 4096, 4096)
    );
    // Per search too, and min_score must be a number.
    e.add_items("c", vec![text("a dog", json!({}))])
        .await
        .unwrap();
    let mut q = query("a dog", 1);
    q.ef_search = Some(big + 1);
    assert_eq!(
        e.search("c", q).await.unwrap_err().code(),
        "invalid_request"
    );
    for bad in [f32::NAN, f32::INFINITY] {
        let mut q = query("a dog", 1);
        q.min_score = Some(bad);
        assert_eq!(
            e.search("c", q).await.unwrap_err().code(),
            "invalid_request"
        );
    }
}
