//! Throughput figures, printed rather than asserted. Ignored by default:
//! `cargo test --lib store::tests::bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::super::{IndexParams, NewCollection, NewItem, PutOptions, SledStore, Store};

const DIM: u32 = 512;

fn coll(name: &str) -> NewCollection {
    NewCollection {
        name: name.into(),
        model: "m".into(),
        dim: DIM,
        index: IndexParams::default(),
        auto_tags: vec![],
    }
}

fn new_item(n: u64, content_len: usize) -> NewItem {
    let content = (content_len > 0).then(|| {
        let mut c = n.to_le_bytes().to_vec();
        c.resize(content_len, (n % 251) as u8);
        c
    });
    NewItem {
        id: Some(format!("item-{n:08}")),
        modality: if n.is_multiple_of(2) { "image" } else { "text" }.into(),
        content: content.map(Into::into),
        content_type: None,
        text: None,
        metadata: json!({"n": n}),
        model: "m".into(),
        weights_hash: "w".into(),
        preprocess_version: "1".into(),
        vector: (0..DIM)
            .map(|i| ((n + u64::from(i)) % 17) as f32 / 17.0)
            .collect(),
    }
}

/// Puts batches of `batch` items for about `budget`; returns (items/s, ms per call).
fn run(
    s: &SledStore,
    c: &str,
    batch: usize,
    content_len: usize,
    next: &mut u64,
    budget: Duration,
) -> (f64, f64) {
    let start = Instant::now();
    let mut calls = 0u64;
    let mut items = 0u64;
    while start.elapsed() < budget {
        let b: Vec<NewItem> = (0..batch as u64)
            .map(|j| new_item(*next + j, content_len))
            .collect();
        *next += batch as u64;
        s.put_items(c, b, PutOptions::default()).unwrap();
        calls += 1;
        items += batch as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    (items as f64 / secs, secs * 1000.0 / calls as f64)
}

#[test]
#[ignore]
fn measure() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let budget = Duration::from_millis(1500);
    let mut next = 0u64;
    for content_len in [0usize, 4096] {
        let c = format!("c{content_len}");
        s.create_collection(coll(&c)).unwrap();
        for batch in [1usize, 8, 64, 256] {
            let (rate, ms) = run(&s, &c, batch, content_len, &mut next, budget);
            println!(
                "put_items dim {DIM}, content {content_len} B, batch {batch:>3}: {rate:>7.0} items/s, {ms:>7.2} ms/call"
            );
        }
    }
    let total: u64 = ["c0", "c4096"]
        .iter()
        .map(|c| s.modality_counts(c).unwrap().values().sum::<u64>())
        .sum();

    let ids: Vec<String> = s
        .list_items("c4096", 200, None)
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    let start = Instant::now();
    for id in &ids {
        s.delete_item("c4096", id).unwrap();
    }
    println!(
        "delete_item (with content file): {:.2} ms/call",
        start.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64
    );

    let start = Instant::now();
    let n = s.vectors("c4096").unwrap().map(Result::unwrap).count();
    let el = start.elapsed();
    println!(
        "vectors(): {n} vectors in {el:?} ({:.0}/s)",
        n as f64 / el.as_secs_f64()
    );

    let start = Instant::now();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let p = s.list_items("c4096", 100, cursor.as_deref()).unwrap();
        pages += 1;
        cursor = p.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    println!("list_items: {pages} pages of 100 in {:?}", start.elapsed());

    drop(s);
    for _ in 0..3 {
        let start = Instant::now();
        let s = SledStore::open(dir.path()).unwrap();
        let el = start.elapsed();
        println!("reopen with {total} items ({n} content files): {el:?}");
        drop(s);
    }
    let start = Instant::now();
    let s = SledStore::open(dir.path()).unwrap();
    s.delete_collection("c4096").unwrap();
    println!(
        "delete_collection of {n} items incl. open: {:?}",
        start.elapsed()
    );
}
