//! Batching across callers: concurrent requests share model calls, a full queue answers 429,
//! callers that left are skipped, and the token budget bounds a batch.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowmesh_encoder::{router, Batch, BatchConfig, Encoder, HashModel, InferenceError, Model};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::testing::post;
use flowmesh_shared::Document;
use serde_json::json;

/// What the probe model saw, and the gate that holds its calls.
#[derive(Default)]
struct ProbeState {
    batches: Mutex<Vec<Vec<String>>>,
    /// While set, every call waits for one message on it before answering.
    gate: Mutex<Option<Receiver<()>>>,
    /// Told each time a call starts.
    entered: Mutex<Option<Sender<()>>>,
}

/// The hash model, recording its batches and optionally held at a gate.
struct Probe {
    state: Arc<ProbeState>,
    inner: HashModel,
}

impl Model for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Batch::Texts(texts) = batch else {
            return Err(InferenceError("texts only".into()));
        };
        self.state
            .batches
            .lock()
            .unwrap()
            .push(texts.iter().map(|t| (*t).to_owned()).collect());
        if let Some(entered) = self.state.entered.lock().unwrap().as_ref() {
            let _ = entered.send(());
        }
        if let Some(gate) = self.state.gate.lock().unwrap().as_ref() {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        self.inner.embed(batch)
    }
}

struct Harness {
    state: Arc<ProbeState>,
    encoder: Arc<Encoder>,
    open_tx: Sender<()>,
    entered_rx: Receiver<()>,
}

/// An encoder on one inference thread whose model waits at a gate.
fn gated(config: &BatchConfig) -> Harness {
    let state = Arc::new(ProbeState::default());
    let (open_tx, gate_rx) = channel();
    let (entered_tx, entered_rx) = channel();
    *state.gate.lock().unwrap() = Some(gate_rx);
    *state.entered.lock().unwrap() = Some(entered_tx);
    let model = Probe {
        state: state.clone(),
        inner: HashModel::new(32).unwrap(),
    };
    Harness {
        state,
        encoder: Arc::new(Encoder::batched(Arc::new(model), config).unwrap()),
        open_tx,
        entered_rx,
    }
}

fn config(max_batch: usize, max_tokens: usize, queue: usize) -> BatchConfig {
    BatchConfig {
        workers: 1,
        max_batch,
        max_tokens,
        max_wait: Duration::ZERO,
        queue_capacity: queue,
    }
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

/// Waits (off the async threads) until the model has started a call.
async fn entered(h: &Harness) {
    let rx = &h.entered_rx;
    tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(10)))
        .expect("the model was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_model_calls_and_get_their_own_embeddings() {
    let h = gated(&config(64, 10_000, 1024));
    let first = spawn_encode(&h.encoder, "first");
    entered(&h).await;
    // The model is busy with "first": these 20 queue up meanwhile.
    let texts: Vec<String> = (0..20).map(|i| format!("text number {i}")).collect();
    let rest: Vec<_> = texts.iter().map(|t| spawn_encode(&h.encoder, t)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..21 {
        let _ = h.open_tx.send(());
    }
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
    entered(&h).await;
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
    for _ in 0..3 {
        let _ = h.open_tx.send(());
    }
    assert!(first.await.unwrap().is_ok());
    for q in queued {
        assert!(q.await.unwrap().unwrap().embedding.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_caller_has_gone_is_skipped() {
    let h = gated(&config(64, 10_000, 16));
    let first = spawn_encode(&h.encoder, "running");
    entered(&h).await;
    let gone = spawn_encode(&h.encoder, "caller gone");
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    let _ = gone.await;
    let kept = spawn_encode(&h.encoder, "caller waits");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let _ = h.open_tx.send(());
    }
    assert!(first.await.unwrap().is_ok());
    assert!(kept.await.unwrap().unwrap().embedding.is_some());
    let seen: Vec<String> = h
        .state
        .batches
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(seen, ["running", "caller waits"]);
}

/// Holds the model on `first`, queues `texts` meanwhile, releases it, and returns the sizes of
/// the batches the model saw.
async fn batch_sizes(config: &BatchConfig, first: &str, texts: &[String]) -> Vec<usize> {
    let h = gated(config);
    let running = spawn_encode(&h.encoder, first);
    entered(&h).await;
    let rest: Vec<_> = texts.iter().map(|t| spawn_encode(&h.encoder, t)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..=texts.len() {
        let _ = h.open_tx.send(());
    }
    assert!(running.await.unwrap().is_ok());
    for r in rest {
        assert!(r.await.unwrap().is_ok());
    }
    let batches = h.state.batches.lock().unwrap();
    batches.iter().map(Vec::len).collect()
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
