//! Deterministic synthetic vectors for recall tests and benchmarks: points drawn around random
//! cluster centres, as real embeddings group by topic, and exact ground truth to compare with.

use crate::backend::{Entry, Metric};
use flowmesh_shared::vector::l2_normalise;

pub use flowmesh_shared::rng::SplitMix64;

/// The generator under its earlier name, for callers that still use it.
pub type Rng = SplitMix64;

/// `n` vectors of `dim` values (row-major) around `clusters` centres drawn from a standard
/// normal; each point is its centre plus normal noise of standard deviation `spread`.
pub fn clustered(
    n: usize,
    dim: usize,
    clusters: usize,
    spread: f32,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let clusters = clusters.max(1);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    jittered(&centres, dim, n, spread, rng)
}

/// `n` queries: stored vectors (chosen at random) moved by normal noise of deviation `noise`.
pub fn queries_near(
    data: &[f32],
    dim: usize,
    n: usize,
    noise: f32,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    jittered(data, dim, n, noise, rng)
}

/// `n` points, each a row of `rows` chosen at random plus normal noise of deviation `noise`.
fn jittered(rows: &[f32], dim: usize, n: usize, noise: f32, rng: &mut SplitMix64) -> Vec<f32> {
    let count = rows.len() / dim.max(1);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let r = rng.below(count);
        out.extend(
            rows[r * dim..(r + 1) * dim]
                .iter()
                .map(|x| x + noise * rng.normal()),
        );
    }
    out
}

/// The rows of `data` (row-major, `dim` values each) as entries named by `ids`, in order,
/// without parents: what [`crate::VectorIndex::upsert`] stores.
pub fn entries<'a, S: AsRef<str>>(ids: &'a [S], data: &'a [f32], dim: usize) -> Vec<Entry<'a>> {
    ids.iter()
        .zip(data.chunks_exact(dim.max(1)))
        .map(|(id, vector)| Entry {
            id: id.as_ref(),
            parent_id: None,
            vector,
        })
        .collect()
}

/// The rows of `queries` (row-major, `dim` values each) as entries to search with (id `q`).
pub fn query_entries(queries: &[f32], dim: usize) -> Vec<Entry<'_>> {
    queries
        .chunks_exact(dim.max(1))
        .map(|vector| Entry {
            id: "q",
            parent_id: None,
            vector,
        })
        .collect()
}

/// The exact top `k` rows of `data` for each query, best first (f64 arithmetic, ties by row).
pub fn exact_top_k(
    data: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    metric: Metric,
) -> Vec<Vec<usize>> {
    let prepare = |v: &[f32]| {
        let mut v = v.to_vec();
        if metric == Metric::Cosine {
            l2_normalise(&mut v);
        }
        v
    };
    let rows: Vec<Vec<f32>> = data.chunks_exact(dim).map(prepare).collect();
    queries
        .chunks_exact(dim)
        .map(|q| {
            let q = prepare(q);
            let mut scored: Vec<(f64, usize)> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let s = match metric {
                        Metric::Cosine => r
                            .iter()
                            .zip(&q)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum(),
                        Metric::L2 => -r
                            .iter()
                            .zip(&q)
                            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                            .sum::<f64>(),
                    };
                    (s, i)
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().take(k).map(|(_, i)| i).collect()
        })
        .collect()
}

/// Mean over queries of |found ∩ truth| / |truth|.
pub fn recall<T: PartialEq>(found: &[Vec<T>], truth: &[Vec<T>]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let total: f64 = found
        .iter()
        .zip(truth)
        .map(|(f, t)| {
            if t.is_empty() {
                1.0
            } else {
                t.iter().filter(|x| f.contains(x)).count() as f64 / t.len() as f64
            }
        })
        .sum();
    total / truth.len() as f64
}
