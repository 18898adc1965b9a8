//! Benchmarks of the shared hot paths: the top-k merge of `all` polling, and the JSON and
//! MessagePack codecs every executor call goes through. Run with
//! `cargo bench -p flowmesh-shared` (see docs/benchmarks.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use flowmesh_shared::codec::Format;
use flowmesh_shared::fanout::merge_top_k;
use flowmesh_shared::{Document, Envelope};

/// Shards in the merge bench, and matches each shard answers.
const SHARDS: usize = 4;
const MATCHES_PER_SHARD: usize = 100;
/// Documents in the codec bench's envelope, and the dimension of their embeddings.
const DOCUMENTS: usize = 50;
const DIM: usize = 384;

/// A deterministic pseudo-random sequence in [0, 1), so that every run measures the same input.
fn unit_floats(seed: u64) -> impl Iterator<Item = f32> {
    let mut rng = flowmesh_shared::rng::SplitMix64::new(seed);
    std::iter::repeat_with(move || rng.uniform() as f32)
}

/// `SHARDS` answers of `MATCHES_PER_SHARD` matches each, sorted best first as shards answer,
/// with ids that overlap across shards so the merge's deduplication has work to do.
fn shard_answers() -> Vec<Vec<Document>> {
    (0..SHARDS)
        .map(|shard| {
            let mut matches: Vec<Document> = unit_floats(shard as u64 + 1)
                .take(MATCHES_PER_SHARD)
                .enumerate()
                .map(|(i, score)| Document {
                    id: format!("doc-{}", (i * 7 + shard * 13) % 300),
                    score: Some(score),
                    ..Document::default()
                })
                .collect();
            matches.sort_by(|a, b| {
                b.score
                    .partial_cmp(&a.score)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            matches
        })
        .collect()
}

fn merge(c: &mut Criterion) {
    let answers = shard_answers();
    for k in [10, 100] {
        c.bench_function(
            &format!("merge_top_k/{SHARDS}x{MATCHES_PER_SHARD}/k{k}"),
            |b| {
                b.iter_batched(
                    || answers.clone(),
                    |lists| black_box(merge_top_k(lists, k)),
                    BatchSize::SmallInput,
                );
            },
        );
    }
}

/// An envelope of `DOCUMENTS` texts with `DIM`-float embeddings, as the encoder answers.
fn envelope() -> Envelope {
    let mut floats = unit_floats(42);
    Envelope::new(
        (0..DOCUMENTS)
            .map(|i| Document {
                embedding: Some(floats.by_ref().take(DIM).collect()),
                ..Document::text(
                    format!("doc-{i}"),
                    format!("the text of document number {i}"),
                )
            })
            .collect(),
    )
}

fn codecs(c: &mut Criterion) {
    let envelope = envelope();
    for (name, format) in [("json", Format::Json), ("msgpack", Format::MsgPack)] {
        let encoded = format.encode(&envelope).unwrap_or_default();
        assert!(!encoded.is_empty(), "{name} cannot encode the envelope");
        c.bench_function(&format!("codec/{name}/encode/{DOCUMENTS}x{DIM}"), |b| {
            b.iter(|| black_box(format.encode(black_box(&envelope))));
        });
        c.bench_function(&format!("codec/{name}/decode/{DOCUMENTS}x{DIM}"), |b| {
            b.iter(|| black_box(format.decode::<Envelope>(black_box(&encoded))));
        });
    }
}

criterion_group!(benches, merge, codecs);
criterion_main!(benches);
