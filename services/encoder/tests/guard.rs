//! The encoder under abuse (issue 12), with the `hash` model behind a probe that records the
//! batches it runs and can be held at a gate: limits answer 413 naming their flag before any
//! work; a job larger than a batch runs as several batches with the embeddings it gets alone;
//! expired deadlines and callers that left stop the work; `/readyz` is 503 while the queue is
//! full; a model's NaN is a 500, never an embedding.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::ops::Deref;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use clap::Parser;
use flowmesh_encoder::{app, router, Config, HashModel, Model};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::testing::{post, send};
use flowmesh_shared::{Document, Limits};
use serde_json::{json, Value};
use support::{batch_config, ProbeOptions, Probed};

/// A probed encoder on one inference thread, and its routes.
struct Harness {
    probed: Probed,
    app: Router,
}

impl Deref for Harness {
    type Target = Probed;

    fn deref(&self) -> &Probed {
        &self.probed
    }
}

impl Harness {
    /// An encoder on one inference thread; with `gated`, every model call waits for `open`.
    fn new(max_batch: usize, queue: usize, gated: bool) -> Self {
        Self::with(
            max_batch,
            queue,
            ProbeOptions {
                gated,
                ..ProbeOptions::default()
            },
        )
    }

    fn with(max_batch: usize, queue: usize, options: ProbeOptions) -> Self {
        let probed = Probed::new(&batch_config(1, max_batch, 10_000, queue), 32, options);
        let app = router(
            probed.encoder.clone(),
            Readiness::ready(),
            &Limits::with_max_body_bytes(1 << 20),
        );
        Self { probed, app }
    }

    /// Lets one more model call through and indexes the document `next`: the status.
    async fn index_next(&self) -> u16 {
        self.open(1);
        let body = json!({"data": [{"id": "n", "text": "next"}]});
        index(&self.app, &body, None).await.0
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
    let embeddings = out["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), texts.len(), "one embedding per text");
    for (text, got) in texts.iter().zip(embeddings) {
        let alone = reference.embed_texts(&[text.as_str()]).unwrap().remove(0);
        let got: Vec<f32> = serde_json::from_value(got.clone()).unwrap();
        assert_eq!(got, alone, "{text}");
    }

    // The token budget splits too: 3 words a text (the hash model counts words), 7 a batch.
    let probed = Probed::new(&batch_config(2, 64, 7, 64), 8, ProbeOptions::default());
    let mut docs: Vec<Document> = (0..5)
        .map(|i| Document::text(format!("d{i}"), format!("w{i} x y")))
        .collect();
    probed.encoder.encode(&mut docs).await.unwrap();
    let mut sizes = probed.batch_sizes();
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
    assert_eq!(h.index_next().await, 200);
    assert_eq!(h.seen(), ["running", "next"]);
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
    let started = Instant::now();
    assert_eq!(h.index_next().await, 200);
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
    let h = Harness::with(
        4,
        8,
        ProbeOptions {
            nan: true,
            ..ProbeOptions::default()
        },
    );
    let (status, out) = post(&h.app, "index", &json!({"data": docs(2)})).await;
    assert_eq!(status.as_u16(), 500, "{out}");
    assert_eq!(out["kind"], "internal", "{out}");
    let (status, out) = post(&h.app, "encode", &json!({"texts": ["a"]})).await;
    assert_eq!(status.as_u16(), 500, "{out}");
}
