//! Batching across callers: concurrent requests share model calls, a full queue answers 429,
//! callers that left are skipped, and the token budget bounds a batch.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowmesh_encoder::{router, BatchConfig, Encoder, HashModel, Model};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::testing::post;
use flowmesh_shared::Document;
use serde_json::json;
use support::{ProbeOptions, Probed};

/// An encoder on one inference thread whose model waits at a gate.
fn gated(config: &BatchConfig) -> Probed {
    Probed::new(
        config,
        32,
        ProbeOptions {
            gated: true,
            ..ProbeOptions::default()
        },
    )
}

fn config(max_batch: usize, max_tokens: usize, queue: usize) -> BatchConfig {
    support::batch_config(1, max_batch, max_tokens, queue)
}

fn doc(text: &str) -> Document {
    Document::text(text, text)
}

/// Encodes `text` on a task of its own.
fn spawn_encode(
    encoder: &Arc<Encoder>,
    text: &str,
) -> tokio::task::JoinHandle<Result<Document, String>> {
    let encoder = encoder.clone();
    let mut docs = vec![doc(text)];
    tokio::spawn(async move {
        encoder.encode(&mut docs).await.map_err(|e| e.to_string())?;
        Ok(docs.remove(0))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_model_calls_and_get_their_own_embeddings() {
    let h = gated(&config(64, 10_000, 1024));
    let first = spawn_encode(&h.encoder, "first");
    h.entered().await;
    // The model is busy with "first": these 20 queue up meanwhile.
    let texts: Vec<String> = (0..20).map(|i| format!("text number {i}")).collect();
    let rest: Vec<_> = texts.iter().map(|t| spawn_encode(&h.encoder, t)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.open(21);
    assert!(first.await.unwrap().is_ok());
    let reference = HashModel::new(32).unwrap();
    for (t, handle) in texts.iter().zip(rest) {
        let d = handle.await.unwrap().unwrap();
        assert_eq!(
            d.embedding.unwrap(),
            reference.embed_texts(&[t.as_str()]).unwrap()[0],
            "{t} got its own embedding"
        );
    }
    let batches = h.state.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        21,
        "every text ran once"
    );
    assert_eq!(
        batches.len(),
        2,
        "the 20 waiting requests ran as one batch: {batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_queued_requests_still_finish() {
    let h = gated(&config(64, 10_000, 2));
    let app = router(
        h.encoder.clone(),
        Readiness::ready(),
        &flowmesh_shared::Limits::with_max_body_bytes(1 << 20),
    );
    let first = spawn_encode(&h.encoder, "running");
    h.entered().await;
    let queued = [
        spawn_encode(&h.encoder, "queued one"),
        spawn_encode(&h.encoder, "queued two"),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = post(
        &app,
        "index",
        &json!({"data": [{"id": "x", "text": "one too many"}]}),
    )
    .await;
    assert_eq!(status.as_u16(), 429, "{body}");
    assert_eq!(body["kind"], "overloaded");
    assert!(
        body["error"].as_str().unwrap().contains("queue is full"),
        "{body}"
    );
    h.open(3);
    assert!(first.await.unwrap().is_ok());
    for q in queued {
        assert!(q.await.unwrap().unwrap().embedding.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_caller_has_gone_is_skipped() {
    let h = gated(&config(64, 10_000, 16));
    let first = spawn_encode(&h.encoder, "running");
    h.entered().await;
    let gone = spawn_encode(&h.encoder, "caller gone");
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    let _ = gone.await;
    let kept = spawn_encode(&h.encoder, "caller waits");
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.open(3);
    assert!(first.await.unwrap().is_ok());
    assert!(kept.await.unwrap().unwrap().embedding.is_some());
    assert_eq!(h.seen(), ["running", "caller waits"]);
}

/// Holds the model on `first`, queues `texts` meanwhile, releases it, and returns the sizes of
/// the batches the model saw.
async fn batch_sizes(config: &BatchConfig, first: &str, texts: &[String]) -> Vec<usize> {
    let h = gated(config);
    let running = spawn_encode(&h.encoder, first);
    h.entered().await;
    let rest: Vec<_> = texts.iter().map(|t| spawn_encode(&h.encoder, t)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.open(texts.len() + 1);
    assert!(running.await.unwrap().is_ok());
    for r in rest {
        assert!(r.await.unwrap().is_ok());
    }
    h.batch_sizes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_budget_and_batch_size_bound_a_batch() {
    // Each text is 3 words; a budget of 7 tokens holds two of them.
    let three_words: Vec<String> = (0..5).map(|i| format!("w{i} x y")).collect();
    let sizes = batch_sizes(&config(64, 7, 64), "a b c", &three_words).await;
    assert_eq!(sizes, [1, 2, 2, 1], "batches of at most 7 tokens");

    // And max_batch: 2 texts a call at most.
    let one_word: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    let sizes = batch_sizes(&config(2, 10_000, 64), "a", &one_word).await;
    assert_eq!(sizes, [1, 2, 2, 1], "batches of at most 2 texts");
}

/// A text of `words` words for item `i` (the hash model counts words as tokens).
fn words(i: usize, words: usize) -> String {
    (0..words)
        .map(|w| format!("w{i}x{w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lengths from 1 to 40 words in a scrambled order, as a mix of queries and passages comes.
fn mixed_lengths(n: usize) -> Vec<usize> {
    (0..n).map(|i| 1 + (i * 17 + 5) % 40).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_of_similar_lengths_share_model_calls_and_answers_keep_each_callers_order() {
    let h = gated(&config(64, 10_000, 1024));
    let first = spawn_encode(&h.encoder, "first");
    h.entered().await;
    // Eight callers of 12 texts each, queued while the model is busy: one batch of 96 texts
    // would exceed 64, so they run as batches of whole requests, each sorted by length.
    let jobs: Vec<Vec<String>> = (0..8)
        .map(|j| {
            mixed_lengths(12)
                .into_iter()
                .enumerate()
                .map(|(k, n)| words(j * 100 + k, (n + j) % 40 + 1))
                .collect()
        })
        .collect();
    let handles: Vec<_> = jobs
        .iter()
        .map(|texts| {
            let encoder = h.encoder.clone();
            let mut docs: Vec<Document> = texts.iter().map(|t| doc(t)).collect();
            tokio::spawn(async move {
                encoder
                    .encode(&mut docs)
                    .await
                    .map(|()| docs)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.open(1000);
    assert!(first.await.unwrap().is_ok());
    let reference = HashModel::new(32).unwrap();
    for (texts, handle) in jobs.iter().zip(handles) {
        let docs = handle.await.unwrap().unwrap();
        for (t, d) in texts.iter().zip(docs) {
            assert_eq!(d.text.as_deref(), Some(t.as_str()));
            assert_eq!(
                d.embedding.unwrap(),
                reference.embed_texts(&[t.as_str()]).unwrap()[0],
                "{t:?} got its own embedding, in its request's place"
            );
        }
    }
    let batches = h.state.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        97,
        "every text ran once"
    );
    let count = |t: &String| t.split_whitespace().count();
    for b in &batches {
        let lengths: Vec<usize> = b.iter().map(count).collect();
        assert!(
            lengths.windows(2).all(|w| w[0] <= w[1]),
            "a model call's texts are sorted by length: {lengths:?}"
        );
    }
    // The padding the calls paid: every text padded to its call's longest.
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(count).max().unwrap())
        .sum();
    let real: usize = batches.iter().flatten().map(count).sum();
    let share = 1.0 - real as f64 / padded as f64;
    assert!(
        share < 0.2,
        "padding is {share:.2} of the tokens: {batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_arrival_order_a_batch_is_one_model_call() {
    let mut c = config(64, 10_000, 1024);
    c.by_length = false;
    let h = gated(&c);
    let texts: Vec<String> = mixed_lengths(12)
        .into_iter()
        .enumerate()
        .map(|(k, n)| words(k, n))
        .collect();
    let encoder = h.encoder.clone();
    let mut docs: Vec<Document> = texts.iter().map(|t| doc(t)).collect();
    let handle = tokio::spawn(async move { encoder.encode(&mut docs).await.map(|()| docs) });
    h.open(10);
    handle.await.unwrap().unwrap();
    assert_eq!(h.state.batches.lock().unwrap().clone(), [texts]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_request_queued_behind_a_long_one_waits_for_at_most_two_of_its_parts() {
    // One inference thread and batches of 4 texts: a request of 40 texts is 10 parts, of which
    // at most workers + 1 = 2 are queued at a time.
    let h = gated(&config(4, 10_000, 1024));
    let long: Vec<String> = mixed_lengths(40)
        .into_iter()
        .enumerate()
        .map(|(k, n)| words(k, n))
        .collect();
    let encoder = h.encoder.clone();
    let mut docs: Vec<Document> = long.iter().map(|t| doc(t)).collect();
    let long_job = tokio::spawn(async move { encoder.encode(&mut docs).await.map(|()| docs) });
    h.entered().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = spawn_encode(&h.encoder, "short one");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One call at a time, until the short request has its answer.
    let mut calls = 0;
    while !short.is_finished() {
        assert!(calls < 10, "the short request was not served");
        h.open(1);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(short.await.unwrap().is_ok());
    let seen = h.seen();
    let at = seen.iter().position(|t| t == "short one").unwrap();
    // Ahead of it: the part running when it came and the one part queued then, 4 texts each.
    assert!(
        at <= 8,
        "the short request ran after {at} texts of the long one: {:?}",
        h.batch_sizes()
    );
    h.open(100);
    let docs = long_job.await.unwrap().unwrap();
    let reference = HashModel::new(32).unwrap();
    for (t, d) in long.iter().zip(docs) {
        assert_eq!(
            d.embedding.unwrap(),
            reference.embed_texts(&[t.as_str()]).unwrap()[0]
        );
    }
}
