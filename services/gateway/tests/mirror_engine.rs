//! The gateway's side of mirrored copies, against a real nats-server: every write is appended
//! to its shard's log and reaches every copy with its position, `write_consistency` decides
//! whether a write with a dead copy succeeds, a copy that missed a write takes no reads until
//! its `/readyz` says it caught up, and `/status` compares the copies.
//!
//! The copies are small stand-ins that follow the wire contract (apply in log order, read what
//! they missed from the log, answer `x-flowmesh-log-seq`, honour `x-flowmesh-min-seq`); the
//! end-to-end tests run the real indexer.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use flowmesh_gateway::{router, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::codec::Format;
use flowmesh_shared::mirror::{stream_name, Log, LogArgs, ShardLog, MIN_SEQ_HEADER, SEQ_HEADER};
use flowmesh_shared::testing::NatsServer;
use flowmesh_shared::{Endpoint, Envelope, Limits};
use support::{docs, Http, TestServer};

/// A stand-in mirrored copy: an id -> text map that applies the writes of its shard in log
/// order.
struct Copy {
    log: ShardLog,
    state: tokio::sync::Mutex<CopyData>,
    /// While set, writes fail with 500 (a storage failure: the position does not advance).
    failing: AtomicBool,
    /// Searches served.
    searches: AtomicUsize,
}

#[derive(Default)]
struct CopyData {
    applied: u64,
    docs: BTreeMap<String, String>,
    /// The positions of the writes the gateway sent, in the order they came.
    sent: Vec<u64>,
}

impl CopyData {
    fn apply(&mut self, endpoint: Endpoint, body: &[u8]) {
        let env: Envelope = Format::MsgPack.decode(body).unwrap();
        for d in env.data {
            match endpoint {
                Endpoint::Delete => {
                    self.docs.remove(&d.id);
                }
                _ => {
                    self.docs.insert(d.id, d.text.unwrap_or_default());
                }
            }
        }
    }

    fn digest(&self) -> String {
        let mut sum: u128 = 0;
        for (id, text) in &self.docs {
            let h = flowmesh_shared::hash::fnv1a64(format!("{id}\0{text}").as_bytes());
            sum = sum.wrapping_add(u128::from(h) << 64 | u128::from(h.rotate_left(17)));
        }
        format!("{:032x}", sum.wrapping_add(self.docs.len() as u128))
    }
}

impl Copy {
    /// Reads and applies everything the log holds after what this copy applied.
    async fn catch_up(&self, to: u64) {
        let mut data = self.state.lock().await;
        if to > data.applied {
            for r in self.log.read(data.applied + 1, to).await.unwrap() {
                data.apply(r.endpoint, &r.body);
                data.applied = r.seq;
            }
        }
    }
}

fn seq_headers(applied: u64) -> [(&'static str, String); 1] {
    [(SEQ_HEADER, applied.to_string())]
}

async fn write(
    State(copy): State<Arc<Copy>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint: Endpoint = endpoint.parse().unwrap();
    if endpoint == Endpoint::Search {
        copy.searches.fetch_add(1, Ordering::Relaxed);
        let env: Envelope = Format::MsgPack.decode(&body).unwrap();
        let applied = copy.state.lock().await.applied;
        return (
            seq_headers(applied),
            [("content-type", Format::MsgPack.mime())],
            Format::MsgPack.encode(&env).unwrap(),
        )
            .into_response();
    }
    let seq: u64 = headers
        .get(SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if seq == 0 {
        return (StatusCode::CONFLICT, "writes come through the gateway").into_response();
    }
    copy.state.lock().await.sent.push(seq);
    if copy.failing.load(Ordering::Relaxed) {
        let applied = copy.state.lock().await.applied;
        let body = json!({"error": "disk full", "kind": "internal"}).to_string();
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            seq_headers(applied),
            body,
        )
            .into_response();
    }
    copy.catch_up(seq - 1).await;
    let mut data = copy.state.lock().await;
    if seq > data.applied {
        data.apply(endpoint, &body);
        data.applied = seq;
    }
    let env: Envelope = Format::MsgPack.decode(&body).unwrap();
    (
        seq_headers(data.applied),
        [("content-type", Format::MsgPack.mime())],
        Format::MsgPack.encode(&env).unwrap(),
    )
        .into_response()
}

async fn readyz(State(copy): State<Arc<Copy>>, headers: HeaderMap) -> Response {
    let applied = copy.state.lock().await.applied;
    let min: u64 = headers
        .get(MIN_SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if applied < min {
        let body = json!({"error": format!("applied {applied} of {min}"), "kind": "not_ready"});
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            seq_headers(applied),
            body.to_string(),
        )
            .into_response();
    }
    (seq_headers(applied), r#"{"status":"ready"}"#).into_response()
}

async fn stats(State(copy): State<Arc<Copy>>) -> Response {
    let data = copy.state.lock().await;
    let body = json!({"mirror": {
        "log": copy.log.name(),
        "position": data.applied,
        "count": data.docs.len(),
        "digest": data.digest(),
        "state": "ready",
    }});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn copy_app(copy: Arc<Copy>) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .route("/{endpoint}", post(write))
        .with_state(copy)
}

/// The log, the copies (`copies` per shard, each running) and a gateway over them.
struct Mesh {
    _nats: NatsServer,
    log: Log,
    copies: Vec<Vec<(Arc<Copy>, TestServer)>>,
    gateway: TestServer,
    flow: Arc<Flow>,
    http: Http,
}

async fn connect(nats: &NatsServer) -> Log {
    let args = LogArgs {
        log_url: Some(nats.url()),
        ..LogArgs::default()
    };
    Log::connect(&args, "test", None).await.unwrap().unwrap()
}

async fn mesh(name: &str, shards: usize, copies: usize, options: &str) -> Mesh {
    let nats = NatsServer::start(name, None);
    let log = connect(&nats).await;
    let mut all = Vec::new();
    for s in 0..shards {
        let mut shard = Vec::new();
        for _ in 0..copies {
            let copy = Arc::new(Copy {
                log: log.shard(&stream_name("idx", s)),
                state: tokio::sync::Mutex::default(),
                failing: AtomicBool::new(false),
                searches: AtomicUsize::new(0),
            });
            let server = TestServer::start(copy_app(copy.clone())).await;
            shard.push((copy, server));
        }
        all.push(shard);
    }
    let addresses: Vec<Vec<String>> = all
        .iter()
        .map(|s| s.iter().map(|(_, server)| server.base()).collect())
        .collect();
    let yaml = format!(
        "with: {{health_interval_ms: 50}}\nexecutors:\n- {{name: idx, uses: remote, stateful: true, shards: {shards}, addresses: {}{options}}}\n",
        serde_json::to_string(&addresses).unwrap()
    );
    let spec = FlowSpec::from_yaml(&yaml).unwrap();
    let flow = Arc::new(Flow::build_with_log(spec, &ExecutorClient::new(), Some(&log)).unwrap());
    let app = router(AppState::new(
        flow.clone(),
        Limits::with_max_body_bytes(1 << 20),
    ));
    Mesh {
        _nats: nats,
        log,
        copies: all,
        gateway: TestServer::start(app).await,
        flow,
        http: Http::new(),
    }
}

impl Mesh {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.base())
    }

    async fn index(&self, ids: &[String]) -> support::HttpResponse {
        self.http.post(&self.url("/index"), &docs(ids)).await
    }

    async fn status(&self) -> Value {
        self.http.get(&self.url("/status")).await.json()
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn a_mirrored_flow_without_a_log_is_refused_naming_the_executor() {
    let spec = FlowSpec::from_yaml(
        "executors:\n- {name: idx, uses: indexer, replicas: 2, addresses: ['http://127.0.0.1:1', 'http://127.0.0.1:2']}\n",
    )
    .unwrap();
    let error = Flow::build(spec, &ExecutorClient::new())
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"idx\""), "{error}");
    assert!(error.contains("--log-url"), "{error}");
}

#[tokio::test]
async fn writes_reach_every_copy_in_log_order_and_copies_converge() {
    let m = mesh("mirror-order", 2, 2, "").await;
    let mut all = Vec::new();
    for r in 0..12 {
        let ids = names(&format!("r{r}-"), 5);
        let answer = m.index(&ids).await;
        assert_eq!(answer.status, 200, "{}", answer.json());
        all.extend(ids);
    }
    // A delete goes through the log too.
    let deleted = m.http.post(&m.url("/delete"), &docs(&all[..3])).await;
    assert_eq!(deleted.status, 200, "{}", deleted.json());
    let mut held = std::collections::BTreeSet::new();
    for (s, shard) in m.copies.iter().enumerate() {
        let last = m
            .log
            .shard(&stream_name("idx", s))
            .bounds()
            .await
            .unwrap()
            .last;
        assert!(last > 0, "shard {s} got no write");
        let first = shard[0].0.state.lock().await.docs.clone();
        for (copy, _) in shard {
            let data = copy.state.lock().await;
            // Each copy got every position of its shard's log, once and in order.
            let mut sent = data.sent.clone();
            sent.sort_unstable();
            assert_eq!(sent, (1..=last).collect::<Vec<_>>(), "shard {s}");
            assert_eq!(data.applied, last);
            assert_eq!(data.docs, first, "copies of shard {s} differ");
        }
        held.extend(first.into_keys());
    }
    let expected: std::collections::BTreeSet<String> = all[3..].iter().cloned().collect();
    assert_eq!(held, expected);
    let status = m.status().await;
    let idx = &status["executors"][0];
    assert_eq!(idx["kind"], "stateful", "{status}");
    assert_eq!(idx["mirrored"], true, "{status}");
    assert_eq!(idx["write_consistency"], "1", "{status}");
    assert_eq!(idx["converged"], json!([true, true]), "{status}");
    assert_eq!(status["diverged"], false, "{status}");
    let copy = &idx["shards"][0][1];
    assert_eq!(copy["reads"], true, "{status}");
    assert_eq!(copy["digest"].as_str().unwrap().len(), 32, "{status}");
}

#[tokio::test]
async fn a_dead_copy_fails_no_write_with_consistency_one_but_does_with_all() {
    let one = mesh("mirror-one", 1, 2, "").await;
    one.copies[0][1].1.kill();
    for r in 0..3 {
        let answer = one.index(&names(&format!("a{r}-"), 4)).await;
        assert_eq!(answer.status, 200, "{}", answer.json());
    }
    assert_eq!(one.copies[0][0].0.state.lock().await.docs.len(), 12);

    let all = mesh("mirror-all", 1, 2, ", write_consistency: all").await;
    all.copies[0][1].1.kill();
    let answer = all.index(&names("b", 4)).await;
    assert_eq!(answer.status, 503);
    let body = answer.json();
    assert_eq!(body["kind"], "partial_write", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("1 of 2 required copies"), "{error}");
    assert!(error.contains("the log holds the write"), "{error}");
}

#[tokio::test]
async fn a_copy_that_failed_a_write_takes_no_reads_until_it_caught_up() {
    let m = mesh("mirror-reads", 1, 2, "").await;
    let (a, b) = (&m.copies[0][0].0, &m.copies[0][1].0);
    let answer = m.index(&names("x", 3)).await;
    assert_eq!(answer.status, 200);
    b.failing.store(true, Ordering::Relaxed);
    let answer = m.index(&names("y", 3)).await;
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(a.state.lock().await.applied, 2);
    assert_eq!(b.state.lock().await.applied, 1);
    // Behind: no search reaches it, however many there are and however long it takes.
    let before = b.searches.load(Ordering::Relaxed);
    for _ in 0..30 {
        let r = m.http.post(&m.url("/search"), &docs(&names("q", 1))).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.searches.load(Ordering::Relaxed), before);
    let status = m.status().await;
    let shard = &status["executors"][0]["shards"][0];
    assert_eq!(shard[1]["reads"], false, "{status}");
    assert_eq!(shard[1]["position"], 1, "{status}");
    assert_eq!(
        status["executors"][0]["converged"],
        json!([null]),
        "{status}"
    );
    assert_eq!(status["diverged"], false, "{status}");

    // It catches up from the log: its /readyz says so, and it takes reads again.
    b.failing.store(false, Ordering::Relaxed);
    b.catch_up(2).await;
    let mut back = false;
    for _ in 0..200 {
        if m.flow.status()["executors"][0]["shards"][0][1]["reads"] == true {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "the copy that caught up was not put back");
    // Concurrent searches: p2c picks the less loaded copy, so one copy alone answering fast
    // enough would take every sequential search; in flight at once, they spread over both.
    let url = m.url("/search");
    let body = docs(&names("q", 1));
    for _ in 0..5 {
        let answers = futures::future::join_all((0..16).map(|_| m.http.post(&url, &body))).await;
        assert!(answers.iter().all(|r| r.status == 200));
    }
    assert!(
        b.searches.load(Ordering::Relaxed) > before,
        "no search reached the copy"
    );
    let status = m.status().await;
    assert_eq!(
        status["executors"][0]["converged"],
        json!([true]),
        "{status}"
    );
}

#[tokio::test]
async fn with_no_caught_up_copy_reads_go_to_the_most_advanced_one() {
    let m = mesh("mirror-fallback", 1, 2, "").await;
    let (a, b) = (&m.copies[0][0], &m.copies[0][1]);
    assert_eq!(m.index(&names("x", 2)).await.status, 200);
    b.0.failing.store(true, Ordering::Relaxed);
    assert_eq!(m.index(&names("y", 2)).await.status, 200);
    // The only copy holding every acknowledged write dies: the one left is behind, and still
    // answers the reads rather than failing them.
    a.1.kill();
    let before = b.0.searches.load(Ordering::Relaxed);
    for _ in 0..10 {
        let r = m.http.post(&m.url("/search"), &docs(&names("q", 1))).await;
        assert_eq!(r.status, 200, "{}", r.json());
    }
    assert_eq!(b.0.searches.load(Ordering::Relaxed), before + 10);
}
