//! Batch composition, which decides the negatives of a contrastive loss (every other pair of a
//! batch is a negative): random in-batch negatives, batches grouped by a caller's label (hard
//! negatives of one subgroup), or batches mined by current similarity. Pure functions over item
//! indices, seeded for reproducible runs.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// How the items of an epoch are grouped into batches.
#[derive(Debug, Clone, Copy)]
pub enum Negatives<'a> {
    /// A random permutation cut into batches: random in-batch negatives.
    Random,
    /// Items of one label (`labels[i]` for item `i`) share batches as far as groups allow.
    Grouped(&'a [u64]),
    /// `similarity[i * n + j]` is the current similarity of item `i`'s anchor and item `j`'s
    /// candidate (for example [`super::loss::similarity_matrix`] of the two towers' embeddings
    /// over the pool): each batch is a seed item with the candidates most similar to it.
    Mined(&'a [f32]),
}

/// Seeded batch sampler: each call to [`BatchSampler::epoch`] draws the next epoch's batches.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    batch_size: usize,
    rng: StdRng,
}

impl BatchSampler {
    /// `batch_size` of at least 2 (a batch of one has no negative).
    pub fn new(batch_size: usize, seed: u64) -> Self {
        assert!(
            batch_size >= 2,
            "a contrastive batch needs at least two pairs"
        );
        Self {
            batch_size,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Every item in `0..n` exactly once, in batches of `batch_size` (a last smaller batch of at
    /// least two items is kept; a single leftover item is dropped for this epoch).
    pub fn epoch(&mut self, n: usize, negatives: Negatives<'_>) -> Vec<Vec<usize>> {
        let mut batches = match negatives {
            Negatives::Random => {
                let mut items: Vec<usize> = (0..n).collect();
                items.shuffle(&mut self.rng);
                chunk(items, self.batch_size)
            }
            Negatives::Grouped(labels) => {
                assert_eq!(labels.len(), n, "one label per item");
                grouped_batches(labels, self.batch_size, &mut self.rng)
            }
            Negatives::Mined(sim) => {
                assert_eq!(sim.len(), n * n, "an n x n similarity matrix");
                hard_batches(sim, n, self.batch_size, &mut self.rng)
            }
        };
        batches.retain(|b| b.len() >= 2);
        batches.shuffle(&mut self.rng);
        batches
    }
}

fn chunk(items: Vec<usize>, size: usize) -> Vec<Vec<usize>> {
    items.chunks(size).map(<[usize]>::to_vec).collect()
}

/// Each label's items shuffled and cut into full batches; the remainders of all labels are
/// shuffled together and cut into mixed batches.
pub fn grouped_batches(labels: &[u64], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        groups.entry(l).or_default().push(i);
    }
    let mut batches = Vec::new();
    let mut rest = Vec::new();
    for (_, mut items) in groups {
        items.shuffle(rng);
        let full = items.len() / batch_size * batch_size;
        rest.extend_from_slice(&items[full..]);
        items.truncate(full);
        batches.extend(chunk(items, batch_size));
    }
    rest.shuffle(rng);
    batches.extend(chunk(rest, batch_size));
    batches
}

/// Greedy partition of `0..n` by similarity: an unused seed item (in random order) takes the
/// `batch_size - 1` unused items whose candidates are most similar to its anchor
/// (`sim[seed * n + j]`), so that each batch holds the pairs the current model confuses most
/// with its seed.
pub fn hard_batches(sim: &[f32], n: usize, batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut used = vec![false; n];
    let mut batches = Vec::new();
    for seed in order {
        if used[seed] {
            continue;
        }
        used[seed] = true;
        let mut candidates: Vec<usize> = (0..n).filter(|&j| !used[j]).collect();
        // Most similar first; ties by index so that the result depends on the seed only.
        candidates.sort_by(|&x, &y| {
            sim[seed * n + y]
                .total_cmp(&sim[seed * n + x])
                .then(x.cmp(&y))
        });
        let mut batch = vec![seed];
        for &j in candidates.iter().take(batch_size - 1) {
            used[j] = true;
            batch.push(j);
        }
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_items(batches: &[Vec<usize>]) -> Vec<usize> {
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort();
        all
    }

    #[test]
    fn random_batches_cover_every_item_once_and_are_seeded() {
        let mut s = BatchSampler::new(4, 7);
        let e1 = s.epoch(10, Negatives::Random);
        assert_eq!(sorted_items(&e1), (0..10).collect::<Vec<_>>());
        let sizes: Vec<usize> = e1.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&l| l == 4 || l == 2));
        // Same seed, same epochs; the next epoch differs.
        let mut t = BatchSampler::new(4, 7);
        assert_eq!(t.epoch(10, Negatives::Random), e1);
        assert_ne!(s.epoch(10, Negatives::Random), e1);
        // A single leftover item is dropped, not left alone in a batch.
        let e = BatchSampler::new(4, 1).epoch(9, Negatives::Random);
        assert_eq!(sorted_items(&e).len(), 8);
    }

    #[test]
    fn grouped_batches_keep_labels_together() {
        // Labels: 6 items of 1, 5 of 2, 1 of 3.
        let labels: Vec<u64> = [vec![1; 6], vec![2; 5], vec![3]].concat();
        let mut s = BatchSampler::new(3, 42);
        let e = s.epoch(labels.len(), Negatives::Grouped(&labels));
        assert_eq!(sorted_items(&e), (0..12).collect::<Vec<_>>());
        let pure = e
            .iter()
            .filter(|b| b.iter().all(|&i| labels[i] == labels[b[0]]))
            .count();
        // Two full batches of label 1, one of label 2; the remainder (two 2s and the 3) is mixed.
        assert!(pure >= 3, "{e:?}");
        assert_eq!(e.len(), 4);
    }

    #[test]
    fn mined_batches_gather_the_most_similar_items() {
        // Two clusters {0, 2, 4, 6} and {1, 3, 5, 7}: within a cluster similarity 0.9, else 0.1.
        let n = 8;
        let sim: Vec<f32> = (0..n * n)
            .map(|k| if (k / n) % 2 == (k % n) % 2 { 0.9 } else { 0.1 })
            .collect();
        for seed in 0..5 {
            let e = BatchSampler::new(4, seed).epoch(n, Negatives::Mined(&sim));
            assert_eq!(e.len(), 2);
            for b in &e {
                assert!(b.iter().all(|&i| i % 2 == b[0] % 2), "{b:?}");
            }
        }
    }
}
