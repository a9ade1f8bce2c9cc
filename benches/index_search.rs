//! Criterion micro-benchmarks of the vector indexes: one search and one batch insert on a
//! small clustered set, per index kind. The comparison with hnswlib and faiss at full size is
//! `benches/index.sh` (BENCHMARKS.md); these catch regressions of the hot paths.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use omnibind::data::rng::Rng;
use omnibind::index::{new_index, IndexConfig, IndexKind, SearchParams};

const DIM: usize = 128;
const N: usize = 5_000;

/// Seeded vectors around 32 centres.
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let mut next = move || rng.range(-1.0, 1.0) as f32;
    let centres: Vec<Vec<f32>> = (0..32)
        .map(|_| (0..DIM).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| centres[i % 32].iter().map(|c| c + 0.4 * next()).collect())
        .collect()
}

fn config() -> IndexConfig {
    IndexConfig {
        exact_threshold: 0,
        max_elements: N,
        ..IndexConfig::default()
    }
}

fn search(c: &mut Criterion) {
    let data = clustered(N, 1);
    let queries = clustered(64, 2);
    let mut group = c.benchmark_group("search_k10_ef64");
    for kind in [IndexKind::Hnsw, IndexKind::HnswRs, IndexKind::Flat] {
        let index = new_index(kind, DIM, &config()).unwrap();
        let items: Vec<(u64, &[f32])> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, &v[..]))
            .collect();
        index.insert_batch(&items).unwrap();
        let params = SearchParams {
            ef_search: Some(64),
            exact: false,
        };
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| {
                next = (next + 1) % queries.len();
                index.search(&queries[next], 10, &params, None).unwrap()
            })
        });
    }
    group.finish();
}

fn insert(c: &mut Criterion) {
    let data = clustered(1_000, 3);
    let items: Vec<(u64, &[f32])> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, &v[..]))
        .collect();
    let mut group = c.benchmark_group("insert_1000");
    group.sample_size(10);
    for kind in [IndexKind::Hnsw, IndexKind::HnswRs] {
        group.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| {
                let index = new_index(kind, DIM, &config()).unwrap();
                index.insert_batch(&items).unwrap();
                index
            })
        });
    }
    group.finish();
}

criterion_group!(benches, search, insert);
criterion_main!(benches);
