//! The encoder under abuse (issue 12), with the `hash` model behind a probe that records the
//! batches it runs and can be held at a gate: limits answer 413 naming their flag before any
//! work; a job larger than a batch runs as several batches with the embeddings it gets alone;
//! expired deadlines and callers that left stop the work; `/readyz` is 503 while the queue is
//! full; a model's NaN is a 500, never an embedding.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use clap::Parser;
use flowmesh_encoder::{
    app, router, Batch, BatchConfig, Config, Encoder, HashModel, InferenceError, Model,
};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::testing::{post, send};
use flowmesh_shared::{Document, Limits};
use serde_json::{json, Value};

/// What the probe saw, and the gate that holds its calls.
#[derive(Default)]
struct ProbeState {
    batches: Mutex<Vec<Vec<String>>>,
    gate: Mutex<Option<Receiver<()>>>,
    entered: Mutex<Option<Sender<()>>>,
    /// Answer NaN instead of the embeddings.
    nan: bool,
}

/// The hash model, recording its batches, optionally held at a gate.
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
        let seen = texts.iter().map(|t| (*t).to_owned()).collect();
        self.state.batches.lock().unwrap().push(seen);
        if let Some(entered) = self.state.entered.lock().unwrap().as_ref() {
            let _ = entered.send(());
        }
        if let Some(gate) = self.state.gate.lock().unwrap().as_ref() {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        let mut out = self.inner.embed(batch)?;
        if self.state.nan {
            out[0][0] = f32::NAN;
        }
        Ok(out)
    }
}

struct Harness {
    state: Arc<ProbeState>,
    encoder: Arc<Encoder>,
    app: Router,
    open_tx: Sender<()>,
    entered_rx: Receiver<()>,
}

impl Harness {
    /// An encoder on one inference thread; with `gated`, every model call waits for `open`.
    fn new(max_batch: usize, queue: usize, gated: bool) -> Self {
        let mut state = ProbeState::default();
        let (open_tx, gate_rx) = channel();
        let (entered_tx, entered_rx) = channel();
        if gated {
            state.gate = Mutex::new(Some(gate_rx));
            state.entered = Mutex::new(Some(entered_tx));
        }
        Self::with_state(state, max_batch, queue, open_tx, entered_rx)
    }

    fn with_state(
        state: ProbeState,
        max_batch: usize,
        queue: usize,
        open_tx: Sender<()>,
        entered_rx: Receiver<()>,
    ) -> Self {
        let state = Arc::new(state);
        let model = Probe {
            state: state.clone(),
            inner: HashModel::new(32).unwrap(),
        };
        let config = BatchConfig {
            workers: 1,
            max_batch,
            max_tokens: 10_000,
            max_wait: Duration::ZERO,
            queue_capacity: queue,
        };
        let encoder = Arc::new(Encoder::batched(Arc::new(model), &config).unwrap());
        let app = router(
            encoder.clone(),
            Readiness::ready(),
            &Limits::with_max_body_bytes(1 << 20),
        );
        Self {
            state,
            encoder,
            app,
            open_tx,
            entered_rx,
        }
    }

    /// Waits (off the async threads) until the model has started a call.
    async fn entered(&self) {
        let rx = &self.entered_rx;
        tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(10)))
            .expect("the model was called");
    }

    fn open(&self, calls: usize) {
        for _ in 0..calls {
            let _ = self.open_tx.send(());
        }
    }

    fn batch_sizes(&self) -> Vec<usize> {
        self.state
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect()
    }

    /// `/index` of `docs` on a task of its own, with an optional deadline header.
    fn spawn_index(
        &self,
        docs: Vec<Value>,
        deadline_ms: Option<u64>,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let app = self.app.clone();
        tokio::spawn(async move {
            let (status, body) = index(&app, &json!({ "data": docs }), deadline_ms).await;
            (status, body)
        })
    }
}

async fn index(app: &Router, body: &Value, deadline_ms: Option<u64>) -> (u16, Value) {
    let mut request = Request::post("/index").header("content-type", "application/json");
    if let Some(ms) = deadline_ms {
        request = request.header("x-flowmesh-deadline-ms", ms);
    }
    let (status, body) = send(app, request.body(Body::from(body.to_string())).unwrap()).await;
    (status.as_u16(), body)
}

fn docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("text number {i} of many")}))
        .collect()
}

/// The counter `flowmesh_encoder_jobs_cancelled_total` summed over its labels, from `/metrics`.
async fn cancelled(app: &Router) -> f64 {
    let response = tower::ServiceExt::oneshot(
        app.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.starts_with("flowmesh_encoder_jobs_cancelled_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_each_limit_is_413_naming_the_flag() {
    let encoder = |args: &[&str]| {
        let mut all = vec!["e", "--model", "hash"];
        all.extend_from_slice(args);
        app(&Config::parse_from(all)).unwrap()
    };
    let cases: [(&[&str], Value, &str, &str); 5] = [
        (
            &["--max-inputs", "3"],
            json!({"data": docs(4)}),
            "index",
            "--max-inputs",
        ),
        // Chunks count as inputs, not the documents that hold them.
        (
            &["--max-inputs", "3"],
            json!({"data": [{"id": "p", "chunks": docs(4)}]}),
            "search",
            "--max-inputs",
        ),
        (
            &["--max-inputs", "3"],
            json!({"texts": ["a", "b", "c", "d"]}),
            "encode",
            "--max-inputs",
        ),
        (
            &["--max-text-bytes", "10"],
            json!({"data": [{"id": "long", "text": "eleven bytes"}]}),
            "index",
            "--max-text-bytes",
        ),
        (
            &["--max-text-bytes", "10"],
            json!({"texts": ["short", "eleven bytes"]}),
            "encode",
            "--max-text-bytes",
        ),
    ];
    for (args, body, endpoint, flag) in cases {
        let app = encoder(args);
        let (status, out) = post(&app, endpoint, &body).await;
        assert_eq!(status.as_u16(), 413, "{args:?} /{endpoint}: {out}");
        assert_eq!(out["kind"], "limit_exceeded", "{out}");
        let env = format!(
            "FLOWMESH_ENCODER_{}",
            flag[2..].replace('-', "_").to_uppercase()
        );
        assert!(
            error_of(&out).contains(flag) && error_of(&out).contains(&env),
            "{out}"
        );
    }
    // At the limit, everything is served.
    let app = encoder(&["--max-inputs", "3", "--max-text-bytes", "12"]);
    let (status, out) = post(&app, "index", &json!({"data": docs(3)})).await;
    assert_eq!(
        status.as_u16(),
        413,
        "'text number 0 of many' is 22 bytes: {out}"
    );
    let (status, out) = post(&app, "encode", &json!({"texts": ["eleven bytes", "b"]})).await;
    assert_eq!(status.as_u16(), 200, "{out}");
    assert_eq!(out["embeddings"].as_array().unwrap().len(), 2);
    // The defaults are documented in --help and hold: 4096 inputs, 1 MiB a text.
    let defaults = Config::parse_from(["e"]);
    assert_eq!(
        (defaults.max_inputs, defaults.max_text_bytes),
        (4096, 1 << 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_a_batch_runs_as_several_with_the_embeddings_it_gets_alone() {
    let h = Harness::new(4, 64, false);
    let texts: Vec<String> = (0..10)
        .map(|i| format!("sentence {i} about horses"))
        .collect();
    let (status, out) = post(&h.app, "encode", &json!({ "texts": texts })).await;
    assert_eq!(status.as_u16(), 200, "{out}");
    assert_eq!(h.batch_sizes(), [4, 4, 2], "split at --max-batch 4");
    let reference = HashModel::new(32).unwrap();
    for (text, got) in texts.iter().zip(out["embeddings"].as_array().unwrap()) {
        let alone = reference.embed_texts(&[text.as_str()]).unwrap().remove(0);
        let got: Vec<f32> = serde_json::from_value(got.clone()).unwrap();
        assert_eq!(got, alone, "{text}");
    }

    // The token budget splits too: 3 words a text (the hash model counts words), 7 a batch.
    let model = Probe {
        state: Arc::new(ProbeState::default()),
        inner: HashModel::new(8).unwrap(),
    };
    let state = model.state.clone();
    let config = BatchConfig {
        workers: 2,
        max_batch: 64,
        max_tokens: 7,
        max_wait: Duration::ZERO,
        queue_capacity: 64,
    };
    let encoder = Encoder::batched(Arc::new(model), &config).unwrap();
    let mut docs: Vec<Document> = (0..5)
        .map(|i| Document::text(format!("d{i}"), format!("w{i} x y")))
        .collect();
    encoder.encode(&mut docs).await.unwrap();
    let mut sizes: Vec<usize> = state.batches.lock().unwrap().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 2, 2], "at most 7 tokens a batch");
    assert!(docs.iter().all(|d| d.embedding.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_504_and_the_model_does_no_work() {
    let h = Harness::new(4, 64, true);
    // No time left (a budget of 0, which callers never send: a passed deadline is answered by
    // the caller itself): refused before any work, by the shared route and by /encode.
    let (status, out) = index(&h.app, &json!({"data": docs(2)}), Some(0)).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["kind"], "invalid_parameter");
    let request = Request::post("/encode")
        .header("content-type", "application/json")
        .header("x-flowmesh-deadline-ms", "0")
        .body(Body::from(json!({"texts": ["a"]}).to_string()))
        .unwrap();
    let (status, out) = send(&h.app, request).await;
    assert_eq!(status.as_u16(), 400, "{out}");
    assert!(
        h.batch_sizes().is_empty(),
        "no model work: {:?}",
        h.batch_sizes()
    );

    // Expiring while queued behind a busy model: dropped before it reaches the model.
    let before = cancelled(&h.app).await;
    let running = h.spawn_index(vec![json!({"id": "r", "text": "running"})], None);
    h.entered().await;
    let late = h.spawn_index(vec![json!({"id": "l", "text": "too late"})], Some(100));
    let (status, out) = late.await.unwrap();
    assert_eq!(status, 504, "{out}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.open(2);
    assert_eq!(running.await.unwrap().0, 200);
    // A later request runs; the late one never did.
    h.open(1);
    let (status, _) = index(
        &h.app,
        &json!({"data": [{"id": "n", "text": "next"}]}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seen: Vec<String> = h.state.batches.lock().unwrap().concat();
    assert_eq!(seen, ["running", "next"]);
    assert!(
        cancelled(&h.app).await > before,
        "the dropped job is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_mid_job_stops_the_job() {
    // One text a batch: a 200-text job is 200 model calls, each held at the gate.
    let h = Harness::new(1, 64, true);
    let before = cancelled(&h.app).await;
    let job = h.spawn_index(docs(200), None);
    h.entered().await;
    // Three batches run; the fourth is held at the gate with the fifth queued behind it.
    h.open(3);
    for _ in 0..3 {
        h.entered().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.batch_sizes().len(), 4);
    // The caller goes away (as on a disconnect, or the gateway's deadline).
    job.abort();
    let _ = job.await;
    h.open(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran = h.batch_sizes().len();
    assert_eq!(
        ran, 4,
        "the job stopped between batches: {ran} of 200 batches ran"
    );
    let after = cancelled(&h.app).await;
    assert!(
        after > before,
        "the withdrawn parts are counted: {before} -> {after}, batches {:?}",
        h.batch_sizes()
    );
    // A later request is served at once.
    h.open(1);
    let started = Instant::now();
    let (status, _) = index(
        &h.app,
        &json!({"data": [{"id": "n", "text": "next"}]}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(h.batch_sizes().len() <= ran + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_queue_is_full() {
    let h = Harness::new(64, 2, true);
    let readyz = |app: Router| async move {
        let (status, body) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        (status.as_u16(), body)
    };
    assert_eq!(readyz(h.app.clone()).await.0, 200);
    let running = h.spawn_index(docs(1), None);
    h.entered().await;
    let queued = [h.spawn_index(docs(1), None), h.spawn_index(docs(1), None)];
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.encoder.queue_full().is_some());
    let (status, body) = readyz(h.app.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "not_ready");
    assert!(error_of(&body).contains("queue is full"), "{body}");
    // The work routes still answer (429), and readiness comes back once the queue drains.
    let (status, _) = index(&h.app, &json!({"data": docs(1)}), None).await;
    assert_eq!(status, 429);
    h.open(3);
    assert_eq!(running.await.unwrap().0, 200);
    for q in queued {
        assert_eq!(q.await.unwrap().0, 200);
    }
    assert_eq!(readyz(h.app.clone()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_yields_nan_is_a_500_not_an_embedding() {
    let (open_tx, _) = channel();
    let (_, entered_rx) = channel();
    let state = ProbeState {
        nan: true,
        ..ProbeState::default()
    };
    let h = Harness::with_state(state, 4, 8, open_tx, entered_rx);
    let (status, out) = post(&h.app, "index", &json!({"data": docs(2)})).await;
    assert_eq!(status.as_u16(), 500, "{out}");
    assert_eq!(out["kind"], "internal", "{out}");
    let (status, out) = post(&h.app, "encode", &json!({"texts": ["a"]})).await;
    assert_eq!(status.as_u16(), 500, "{out}");
}
