//! `omnibind bench`: measurements that print tables and write machine-readable results.
//!
//! - [`encode`]: the encoders' items per second per modality and batch size, preprocessing
//!   apart, on weights the PyTorch peer (`benches/peers/encode_peers.py`) runs too.
//! - [`http`]: a running server under load, through its public API only.
//! - [`index`]: the vector indexes in-process (build, memory, dump, recall/QPS sweeps), on the
//!   same data and parameters the peer libraries are run on by `benches/peers/`.

use rand::Rng;

pub mod encode;
mod http;
pub mod index;

pub use encode::{encode, EncodeBenchArgs};
pub use http::{http, HttpBenchArgs};
pub use index::{index, IndexBenchArgs};

/// Unit vectors around a few hundred seeded cluster centres.
pub(crate) fn clustered_vectors(n: usize, dim: usize, rng: &mut impl Rng) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..centres.len())];
            let mut v: Vec<f32> = c
                .iter()
                .map(|x| x + rng.random_range(-0.4f32..0.4))
                .collect();
            crate::embed::l2_normalize(&mut v);
            v
        })
        .collect()
}
