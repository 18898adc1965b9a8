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
