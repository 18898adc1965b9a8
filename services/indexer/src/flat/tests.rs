//! The flat index against a full sort, batches against single queries, deletes and replaces.

use super::*;
use crate::kernel::score_rows;
use crate::synthetic::{entries, query_entries};

/// A tiny deterministic generator (Knuth's MMIX LCG), enough for test data.
struct Lcg(u64);

impl Lcg {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // The low bits of an LCG are weak; the high ones are fine.
        self.0 >> 32
    }

    /// Uniform in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 8) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn entry<'a>(id: &'a str, parent_id: Option<&'a str>, vector: &'a [f32]) -> Entry<'a> {
    Entry {
        id,
        parent_id,
        vector,
    }
}

/// Every stored row scored against `q`, fully sorted: the reference for the heap.
fn naive(index: &FlatIndex, q: &[f32], k: usize) -> Vec<(String, f32)> {
    let rows = index.read();
    let dim = rows.dim.expect("dimension");
    let mut q = q.to_vec();
    if index.metric == Metric::Cosine {
        l2_normalise(&mut q);
    }
    // The same kernel scores every row (kernel.rs checks it against f64 sums); what this
    // test checks is the bounded-heap selection against a full sort.
    let kernel = match index.metric {
        Metric::Cosine => Kernel::Dot,
        Metric::L2 => Kernel::NegL2Squared,
    };
    let mut scores = vec![0.0_f32; rows.ids.len()];
    score_rows(
        kernel,
        &q,
        &rows.vectors[..rows.ids.len() * dim],
        &mut scores,
    );
    let mut all: Vec<(String, f32)> = scores
        .iter()
        .zip(&rows.ids)
        .map(|(s, id)| {
            let score = match index.metric {
                Metric::Cosine => s + 0.0,
                Metric::L2 => 0.0 - (-s).sqrt(),
            };
            (id.clone(), score)
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[test]
fn bounded_heap_equals_a_full_sort_on_random_data() {
    let mut rng = Lcg(42);
    for metric in [Metric::Cosine, Metric::L2] {
        for round in 0..20 {
            let dim = 1 + rng.below(40);
            let n = rng.below(300);
            let index = FlatIndex::new(metric);
            let mut vectors: Vec<Vec<f32>> = (0..n)
                .map(|_| (0..dim).map(|_| rng.next_f32()).collect())
                .collect();
            // Exact duplicates make ties, which the id must break.
            for i in 0..n / 10 {
                vectors[i * 10] = vectors[0].clone();
            }
            let ids: Vec<String> = (0..n)
                .map(|i| format!("d{}", rng.below(1000) * 1000 + i))
                .collect();
            index
                .upsert(&[], &entries(&ids, &vectors.concat(), dim))
                .expect("stored");
            for _ in 0..5 {
                let q: Vec<f32> = if n > 0 && rng.below(2) == 0 {
                    vectors[0].clone()
                } else {
                    (0..dim).map(|_| rng.next_f32()).collect()
                };
                let k = 1 + rng.below(n + 5);
                let got: Vec<(String, f32)> = index
                    .search(&[entry("q", None, &q)], k)
                    .expect("searched")
                    .remove(0)
                    .into_iter()
                    .map(|h| (h.id, h.score))
                    .collect();
                if n == 0 {
                    assert!(got.is_empty());
                } else {
                    assert_eq!(got, naive(&index, &q, k), "{metric:?} round {round} k {k}");
                }
            }
        }
    }
}

/// A batch is scored in tiles of queries, and large scans are split across threads: each
/// query's answer must still be exactly what it gets alone.
#[test]
fn a_batch_answers_each_query_as_it_would_alone() {
    let mut rng = Lcg(7);
    // The last case is over `PARALLEL_WORK`, so it is split across threads where there are
    // several cores.
    for (metric, dim, n, nq) in [
        (Metric::Cosine, 3, 50, 30),
        (Metric::L2, 17, 301, 29),
        (Metric::Cosine, 40, 600, 13),
        (Metric::L2, 32, 20_000, 27),
    ] {
        let index = FlatIndex::new(metric);
        let vectors: Vec<f32> = (0..n * dim).map(|_| rng.next_f32()).collect();
        let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
        index
            .upsert(&[], &entries(&ids, &vectors, dim))
            .expect("stored");
        let queries: Vec<f32> = (0..nq * dim).map(|_| rng.next_f32()).collect();
        let batch = query_entries(&queries, dim);
        let together = index.search(&batch, 7).expect("searched");
        assert_eq!(together.len(), batch.len(), "one answer per query");
        for (q, answer) in batch.iter().zip(&together) {
            let alone = index.search(std::slice::from_ref(q), 7).expect("searched");
            let pairs = |hits: &[Hit]| -> Vec<(String, u32)> {
                hits.iter()
                    .map(|h| (h.id.clone(), h.score.to_bits()))
                    .collect()
            };
            assert_eq!(
                pairs(answer),
                pairs(&alone[0]),
                "{metric:?} dim {dim} n {n}"
            );
        }
    }
}

#[test]
fn delete_keeps_the_matrix_dense_and_consistent() {
    let index = FlatIndex::new(Metric::L2);
    let vs: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, 0.0]).collect();
    let ids = ["a", "b", "c", "d", "e", "f"];
    index
        .upsert(&[], &entries(&ids, &vs.concat(), 2))
        .expect("stored");
    assert_eq!(index.delete(&["b", "zzz", "a"]).unwrap(), 2);
    assert_eq!(index.stats().count, 4);
    // Every remaining id still finds its own vector at distance 0.
    for (id, v) in ids.iter().zip(&vs).skip(2) {
        let hits = index.search(&[entry("q", None, v)], 1).expect("searched");
        assert_eq!(hits[0][0].id, *id);
        assert_eq!(hits[0][0].score, 0.0);
    }
}

#[test]
fn replacing_a_document_drops_its_stale_chunks() {
    let index = FlatIndex::new(Metric::Cosine);
    let v = [1.0_f32, 0.0];
    let old = [
        entry("doc-0", Some("doc"), &v),
        entry("doc-1", Some("doc"), &v),
        entry("other-0", Some("other"), &v),
    ];
    index.upsert(&["doc", "other"], &old).expect("stored");
    index
        .upsert(
            &["doc"],
            &[
                entry("doc-0", Some("doc"), &v),
                entry("doc-2", Some("doc"), &v),
            ],
        )
        .expect("replaced");
    let ids: Vec<String> = index.search(&[entry("q", None, &v)], 10).expect("searched")[0]
        .iter()
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(ids, ["doc-0", "doc-2", "other-0"]);
}
