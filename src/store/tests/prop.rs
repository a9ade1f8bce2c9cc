//! Random sequences of puts, deletes and reopens compared with an in-memory model.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::prelude::*;

use super::super::{
    sha256_hex, OnExistingId, PutOptions, PutOutcome, SledStore, Store, StoreError,
};
use super::{files_under, item, new_collection, open, vector};

const IDS: &[&str] = &["a", "b", "c", "d", "e", "f"];
const CONTENTS: &[&[u8]] = &[b"c0", b"c1", b"c2"];
const MODALITIES: &[&str] = &["image", "text", "audio"];

#[derive(Clone, Debug)]
struct PutSpec {
    id: Option<usize>,
    content: Option<usize>,
    modality: usize,
    k: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        items: Vec<PutSpec>,
        replace: bool,
        dedupe: bool,
    },
    /// Deletes the n-th (modulo) live item, or a pool id when there is none.
    Delete(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let spec = (
        proptest::option::weighted(0.7, 0..IDS.len()),
        proptest::option::weighted(0.7, 0..CONTENTS.len()),
        0..MODALITIES.len(),
        0u64..50,
    )
        .prop_map(|(id, content, modality, k)| PutSpec {
            id,
            content,
            modality,
            k,
        });
    prop_oneof![
        5 => (proptest::collection::vec(spec, 0..4), any::<bool>(), proptest::bool::weighted(0.8))
            .prop_map(|(items, replace, dedupe)| Op::Put { items, replace, dedupe }),
        3 => (0usize..8).prop_map(Op::Delete),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelItem {
    seq: u64,
    modality: String,
    hash: Option<String>,
    k: u64,
}

#[derive(Clone, Debug, Default)]
struct Model {
    items: BTreeMap<String, ModelItem>,
    next_seq: u64,
    generation: u64,
}

impl Model {
    /// The specified behaviour of `put_items`, written independently of the store.
    fn put(
        &mut self,
        specs: &[PutSpec],
        replace: bool,
        dedupe: bool,
    ) -> Result<Vec<PutOutcome>, &'static str> {
        let explicit: Vec<&str> = specs.iter().filter_map(|s| s.id.map(|i| IDS[i])).collect();
        let mut taken: HashSet<String> = explicit.iter().map(|s| s.to_string()).collect();
        if taken.len() != explicit.len() {
            return Err("conflict");
        }
        let before = self.items.clone();
        let mut next = self.clone();
        let mut out = Vec::new();
        let mut batch_owner: HashMap<String, (String, u64)> = HashMap::new();
        let mut replaced: HashSet<String> = HashSet::new();
        let mut stored_any = false;
        for s in specs {
            let hash = s.content.map(|c| sha256_hex(CONTENTS[c]));
            let own = s.id.map(|i| IDS[i]);
            if let (true, Some(h)) = (dedupe, &hash) {
                if let Some((id, seq)) = batch_owner.get(h) {
                    out.push(PutOutcome::Duplicate {
                        id: id.clone(),
                        seq: *seq,
                    });
                    continue;
                }
                let owner = before.iter().find(|(id, it)| {
                    it.hash.as_ref() == Some(h)
                        && !(replace && Some(id.as_str()) == own)
                        && !replaced.contains(*id)
                });
                if let Some((id, it)) = owner {
                    out.push(PutOutcome::Duplicate {
                        id: id.clone(),
                        seq: it.seq,
                    });
                    continue;
                }
            }
            let seq = next.next_seq;
            let id = match own {
                Some(id) => {
                    if before.contains_key(id) && !replace {
                        return Err("conflict");
                    }
                    id.to_string()
                }
                None => {
                    let base = format!("{seq:016x}");
                    let mut cand = base.clone();
                    let mut n = 0;
                    while taken.contains(&cand) || before.contains_key(&cand) {
                        n += 1;
                        cand = format!("{base}-{n}");
                    }
                    taken.insert(cand.clone());
                    cand
                }
            };
            next.next_seq += 1;
            match before.get(&id) {
                Some(old) => {
                    out.push(PutOutcome::Replaced {
                        id: id.clone(),
                        seq,
                        old_seq: old.seq,
                    });
                    replaced.insert(id.clone());
                }
                None => out.push(PutOutcome::Inserted {
                    id: id.clone(),
                    seq,
                }),
            }
            if let Some(h) = &hash {
                batch_owner.entry(h.clone()).or_insert((id.clone(), seq));
            }
            next.items.insert(
                id,
                ModelItem {
                    seq,
                    modality: MODALITIES[s.modality].to_string(),
                    hash,
                    k: s.k,
                },
            );
            stored_any = true;
        }
        if stored_any {
            next.generation += 1;
        }
        *self = next;
        Ok(out)
    }
}

fn check(s: &SledStore, m: &Model, data_dir: &std::path::Path) {
    let c = s.get_collection("c").unwrap();
    assert_eq!((c.next_seq, c.generation), (m.next_seq, m.generation));
    // Listing in pages of 3 returns the model's items in id order.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list_items("c", 3, cursor.as_deref()).unwrap();
        listed.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    let model_ids: Vec<&str> = m.items.keys().map(String::as_str).collect();
    assert_eq!(ids, model_ids);
    for r in &listed {
        let mi = &m.items[&r.id];
        assert_eq!(
            (r.seq, &r.modality, &r.content_hash),
            (mi.seq, &mi.modality, &mi.hash)
        );
        assert_eq!(s.get_item_by_seq("c", r.seq).unwrap().id, r.id);
    }
    let vectors: Vec<(u64, Vec<f32>)> = s.vectors("c").unwrap().map(Result::unwrap).collect();
    let mut expected: Vec<(u64, Vec<f32>)> =
        m.items.values().map(|i| (i.seq, vector(i.k))).collect();
    expected.sort_by_key(|(q, _)| *q);
    assert_eq!(vectors, expected);
    let mut counts = BTreeMap::new();
    for i in m.items.values() {
        *counts.entry(i.modality.clone()).or_insert(0u64) += 1;
    }
    assert_eq!(s.modality_counts("c").unwrap(), counts);
    // Exactly the referenced content files exist.
    let files: BTreeSet<String> = files_under(&data_dir.join("blobs")).into_iter().collect();
    let hashes: BTreeSet<String> = m
        .items
        .values()
        .filter_map(|i| i.hash.as_ref())
        .map(|h| format!("c/{}/{h}", &h[..2]))
        .collect();
    assert_eq!(files, hashes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let created = s.create_collection(new_collection("c")).unwrap();
        let mut m = Model { generation: created.generation, ..Model::default() };
        for op in ops {
            match op {
                Op::Put { items, replace, dedupe } => {
                    let batch = items
                        .iter()
                        .map(|p| item(p.id.map(|i| IDS[i]), MODALITIES[p.modality], p.content.map(|c| CONTENTS[c]), p.k))
                        .collect();
                    let opts = PutOptions {
                        on_existing_id: if replace { OnExistingId::Replace } else { OnExistingId::Error },
                        dedupe,
                        incarnation: None,
                    };
                    let got = s.put_items("c", batch, opts);
                    match m.put(&items, replace, dedupe) {
                        Ok(expected) => prop_assert_eq!(got.unwrap().outcomes, expected),
                        Err(_) => prop_assert!(matches!(got, Err(StoreError::Conflict { .. })), "{:?}", got),
                    }
                }
                Op::Delete(n) => {
                    let id = if m.items.is_empty() {
                        IDS[n % IDS.len()].to_string()
                    } else {
                        m.items.keys().nth(n % m.items.len()).unwrap().clone()
                    };
                    let got = s.delete_item("c", &id);
                    match m.items.remove(&id) {
                        Some(mi) => {
                            let rec = got.unwrap();
                            prop_assert_eq!(rec.seq, mi.seq);
                            m.generation += 1;
                        }
                        None => prop_assert!(matches!(got, Err(StoreError::ItemNotFound { .. })), "{:?}", got),
                    }
                }
                Op::Reopen => {
                    drop(s);
                    s = SledStore::open(dir.path()).unwrap();
                    prop_assert_eq!(s.open_report().gc.clone(), super::super::GcReport::default());
                }
            }
            check(&s, &m, dir.path());
        }
    }
}
