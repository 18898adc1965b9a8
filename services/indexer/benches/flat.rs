//! The flat backend's scan: the distance kernel and the bounded top-k selection, through
//! [`FlatIndex::search`], the call the executor makes. Rows are 384 floats (MiniLM's size),
//! clustered as real embeddings are; 1 query is the latency of a single search, 16 the
//! batched path that reads the matrix once for every query of a tile.
//!
//! `cargo bench -p flowmesh-indexer --bench flat` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a short run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowmesh_indexer::synthetic::{clustered, entries, queries_near, query_entries, SplitMix64};
use flowmesh_indexer::{FlatIndex, Metric, VectorIndex};

const DIM: usize = 384;
const TOP_K: usize = 10;

fn flat_search(c: &mut Criterion) {
    let mut group = c.benchmark_group("flat_search");
    group.sample_size(10);
    for rows in [10_000, 100_000] {
        let mut rng = SplitMix64::new(42);
        let data = clustered(rows, DIM, 64, 0.3, &mut rng);
        let ids: Vec<String> = (0..rows).map(|i| format!("doc-{i}")).collect();
        let index = FlatIndex::new(Metric::Cosine);
        index
            .upsert(&[], &entries(&ids, &data, DIM))
            .expect("stored");
        for nq in [1, 16] {
            let queries = queries_near(&data, DIM, nq, 0.1, &mut rng);
            let batch = query_entries(&queries, DIM);
            group.throughput(Throughput::Elements((rows * nq) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{rows}x{DIM}"), format!("{nq}q")),
                &batch,
                |b, batch| b.iter(|| black_box(index.search(black_box(batch), TOP_K).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, flat_search);
criterion_main!(benches);
