//! The figures of `omnibind eval`: ranking by cosine similarity, recall@k, which modality pairs
//! are trained, and nearest-class prediction. Pure functions over vectors, no model.
//!
//! Ties are broken deterministically everywhere: among equal scores the lower index (earlier
//! manifest item, or earlier class in sorted order) ranks first.

use std::cmp::Ordering;

use serde::Serialize;

use crate::embed::Modality;

/// Cutoffs of recall@k.
pub const KS: [usize; 3] = [1, 5, 10];

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Indices of `scores` from best to worst: descending score, ties by ascending index.
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| match scores[b].total_cmp(&scores[a]) {
        Ordering::Equal => a.cmp(&b),
        o => o,
    });
    order
}

/// Recall of one query → target retrieval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recall {
    /// Queries.
    pub n: usize,
    /// Targets every query is ranked against (the gallery).
    pub gallery: usize,
    /// Recall@1, @5, @10 ([`KS`]): share of queries whose own target ranks in the top k.
    pub at: [f64; 3],
    /// Same with a hit whenever a top-k target has the query's label (only with labels).
    pub label_at: Option<[f64; 3]>,
}

/// Labels of a labelled retrieval: one per query and one per target. A target matches a query
/// when their labels are equal and not empty (an empty label stands for "no class").
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub queries: &'a [String],
    pub targets: &'a [String],
}

/// Retrieval where query `i` belongs with target `own[i]`: for each query every target is
/// ranked by cosine similarity ([`ranking`]) and recall@k is the share of queries whose own
/// target is in the top k. With `labels`, also the share of queries with a target of the same
/// label in the top k.
pub fn recall(
    queries: &[Vec<f32>],
    own: &[usize],
    targets: &[Vec<f32>],
    labels: Option<Labels<'_>>,
) -> Recall {
    assert_eq!(queries.len(), own.len(), "one own target per query");
    assert!(
        own.iter().all(|&j| j < targets.len()),
        "own target out of range"
    );
    if let Some(l) = labels {
        assert_eq!(l.queries.len(), queries.len(), "one label per query");
        assert_eq!(l.targets.len(), targets.len(), "one label per target");
    }
    let n = queries.len();
    let mut hits = [0usize; 3];
    let mut label_hits = [0usize; 3];
    for (i, q) in queries.iter().enumerate() {
        let scores: Vec<f32> = targets.iter().map(|t| cosine(q, t)).collect();
        let order = ranking(&scores);
        let rank = order
            .iter()
            .position(|&j| j == own[i])
            .expect("own target ranked");
        for (h, &k) in hits.iter_mut().zip(&KS) {
            *h += usize::from(rank < k);
        }
        if let Some(l) = labels {
            let want = &l.queries[i];
            for (h, &k) in label_hits.iter_mut().zip(&KS) {
                *h += usize::from(
                    !want.is_empty() && order.iter().take(k).any(|&j| &l.targets[j] == want),
                );
            }
        }
    }
    let share = |h: [usize; 3]| h.map(|h| if n == 0 { 0.0 } else { h as f64 / n as f64 });
    Recall {
        n,
        gallery: targets.len(),
        at: share(hits),
        label_at: labels.map(|_| share(label_hits)),
    }
}

/// Chance level of recall@k for one own target among `n`: `min(k, n) / n`.
pub fn chance_at(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k.min(n) as f64 / n as f64
    }
}

/// Whether the default recipe trains `a` and `b` together: image with text, and image with each
/// of audio, depth, thermal and IMU (either order). Every other pair meets only through the
/// image space and is *emergent*.
pub fn trained_pair(a: Modality, b: Modality) -> bool {
    a != b && (a == Modality::Image || b == Modality::Image)
}

/// Index of the class vector nearest to `x` by cosine; ties go to the lower index.
pub fn nearest(x: &[f32], classes: &[Vec<f32>]) -> Option<usize> {
    let scores: Vec<f32> = classes.iter().map(|c| cosine(x, c)).collect();
    ranking(&scores).first().copied()
}

/// The L2-normalised mean of `vectors` (prompt ensembling).
pub fn mean_normalised(vectors: &[Vec<f32>]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut m = vec![0f32; dim];
    for v in vectors {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for (a, x) in m.iter_mut().zip(v) {
            *a += x / norm;
        }
    }
    let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    m.iter_mut().for_each(|x| *x /= norm);
    m
}

/// Share of the most frequent label (0 when empty).
pub fn majority_rate(labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let mut counts = std::collections::BTreeMap::new();
    for l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    *counts.values().max().expect("non-empty") as f64 / labels.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
            .collect()
    }

    /// [`recall`] of paired rows: query `i` belongs with target `i`, and the labels (if any) are
    /// shared by query and target.
    fn paired_recall(
        queries: &[Vec<f32>],
        targets: &[Vec<f32>],
        labels: Option<&[String]>,
    ) -> Recall {
        assert_eq!(queries.len(), targets.len(), "one target per query");
        let own: Vec<usize> = (0..queries.len()).collect();
        recall(
            queries,
            &own,
            targets,
            labels.map(|l| Labels {
                queries: l,
                targets: l,
            }),
        )
    }

    #[test]
    fn perfect_retrieval_has_recall_one() {
        let v = basis(12);
        let r = paired_recall(&v, &v, None);
        assert_eq!(r.n, 12);
        assert_eq!(r.at, [1.0, 1.0, 1.0]);
        assert_eq!(r.label_at, None);
    }

    #[test]
    fn a_known_permutation_gives_a_known_recall() {
        // Queries 0..4 match their own target; 4..8 match the next query's target (cyclic in
        // 4..8), so their own target is not first but within the top 5 (second best).
        let n = 8;
        let targets = basis(n);
        let queries: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let best = if i < 4 { i } else { 4 + (i - 4 + 1) % 4 };
                let mut q = vec![0.0; n];
                q[best] = 1.0;
                q[i] += 0.5; // own target second for the shifted ones
                q
            })
            .collect();
        let r = paired_recall(&queries, &targets, None);
        assert_eq!(r.at[0], 0.5);
        assert_eq!(r.at[1], 1.0);
        assert_eq!(r.at[2], 1.0);
        // Reversed targets: only the middle of an odd count stays in place.
        let v = basis(5);
        let rev: Vec<Vec<f32>> = v.iter().rev().cloned().collect();
        assert_eq!(paired_recall(&v, &rev, None).at[0], 0.2);
    }

    #[test]
    fn ties_rank_lower_indices_first() {
        assert_eq!(ranking(&[0.5, 0.9, 0.5, 0.9]), [1, 3, 0, 2]);
        // All scores equal: query i has rank i, so recall@1 is 1/n and recall@5 is 5/n.
        let zeros = vec![vec![0.0f32; 3]; 10];
        let r = paired_recall(&zeros, &zeros, None);
        assert_eq!(r.at, [0.1, 0.5, 1.0]);
        assert_eq!(
            nearest(&[1.0, 0.0], &[vec![0.0, 1.0], vec![0.0, 1.0]]),
            Some(0)
        );
        assert_eq!(nearest(&[1.0, 0.0], &[]), None);
    }

    #[test]
    fn label_level_recall_counts_any_target_of_the_class() {
        // Two items of class a that retrieve each other's targets, one item of class b.
        let targets = basis(3);
        let queries = vec![targets[1].clone(), targets[0].clone(), targets[2].clone()];
        let labels = ["a".to_string(), "a".to_string(), "b".to_string()];
        let r = paired_recall(&queries, &targets, Some(&labels));
        assert!((r.at[0] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.label_at, Some([1.0, 1.0, 1.0]));
    }

    #[test]
    fn the_gallery_may_hold_targets_without_a_query() {
        // Two queries ranked against four targets: query 0 belongs with target 2 and finds it
        // first; query 1 belongs with target 3 but targets 0 and 1 (no query of their own)
        // score higher, so its own target is third. Chance is judged on the gallery of four.
        let targets = basis(4);
        let queries = vec![vec![0.0, 0.0, 1.0, 0.0], vec![1.0, 0.9, 0.0, 0.5]];
        let r = recall(&queries, &[2, 3], &targets, None);
        assert_eq!((r.n, r.gallery), (2, 4));
        assert_eq!(r.at, [0.5, 1.0, 1.0]);
        // Labels: target 1 shares query 1's class; unlabelled ("") targets never match, nor
        // does an unlabelled query.
        let q = ["".to_string(), "run".to_string()];
        let t = ["".into(), "run".into(), "".into(), "run".into()];
        let labelled = recall(
            &queries,
            &[2, 3],
            &targets,
            Some(Labels {
                queries: &q,
                targets: &t,
            }),
        );
        assert_eq!(labelled.label_at, Some([0.0, 0.5, 0.5]));
    }

    #[test]
    fn trained_and_emergent_pairs() {
        use Modality::*;
        for m in [Text, Audio, Depth, Thermal, Imu] {
            assert!(trained_pair(Image, m) && trained_pair(m, Image), "{m}");
        }
        for (a, b) in [
            (Audio, Text),
            (Depth, Text),
            (Thermal, Text),
            (Imu, Text),
            (Audio, Depth),
            (Thermal, Imu),
        ] {
            assert!(!trained_pair(a, b) && !trained_pair(b, a), "{a}-{b}");
        }
        assert!(!trained_pair(Image, Image));
    }

    #[test]
    fn helpers() {
        assert_eq!(chance_at(10, 4), 1.0);
        assert_eq!(chance_at(10, 40), 0.25);
        assert_eq!(chance_at(1, 0), 0.0);
        assert_eq!(majority_rate(&[0, 1, 1, 2]), 0.5);
        assert_eq!(majority_rate(&[]), 0.0);
        let m = mean_normalised(&[vec![2.0, 0.0], vec![0.0, 1.0]]);
        assert!((m[0] - m[1]).abs() < 1e-6 && (m[0] * m[0] + m[1] * m[1] - 1.0).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
