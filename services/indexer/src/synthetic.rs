//! Deterministic synthetic vectors for recall tests and benchmarks: points drawn around random
//! cluster centres, as real embeddings group by topic, and exact ground truth to compare with.

use crate::backend::Metric;
use flowmesh_shared::vector::l2_normalise;

/// SplitMix64: small, fast and good enough for test data; the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// `n` vectors of `dim` values (row-major) around `clusters` centres drawn from a standard
/// normal; each point is its centre plus normal noise of standard deviation `spread`.
pub fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, rng: &mut Rng) -> Vec<f32> {
    let clusters = clusters.max(1);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.below(clusters);
        out.extend(
            centres[c * dim..(c + 1) * dim]
                .iter()
                .map(|x| x + spread * rng.normal()),
        );
    }
    out
}

/// `n` queries: stored vectors (chosen at random) moved by normal noise of deviation `noise`.
pub fn queries_near(data: &[f32], dim: usize, n: usize, noise: f32, rng: &mut Rng) -> Vec<f32> {
    let rows = data.len() / dim.max(1);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let r = rng.below(rows);
        out.extend(
            data[r * dim..(r + 1) * dim]
                .iter()
                .map(|x| x + noise * rng.normal()),
        );
    }
    out
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
