//! The gateway under hostile and unlucky traffic: limits, deadlines, stalled shards, honest
//! partial writes, the retry budget and load shedding. Real HTTP servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::{json, Value};

use flowmesh_gateway::{router, AppState, Flow, FlowSpec, GatewayLimits};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::fanout::shard_of;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{executor_router, Executor};
use flowmesh_shared::{ApiError, Deadline, Envelope, Limits};
use support::{docs, executor_app, Http, TestServer};

/// A gateway for `yaml` with the given limits.
async fn gateway(yaml: &str, limits: Limits, guard: GatewayLimits) -> TestServer {
    let spec = FlowSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    TestServer::start(router(AppState::new(flow, limits).with_guard(guard))).await
}

fn big_body() -> Limits {
    Limits::with_max_body_bytes(64 << 20)
}

/// An executor that counts its calls and answers with what it got.
fn echo(count: Arc<AtomicUsize>) -> Router {
    executor_app(move |_e, env: Envelope| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(env)
        }
    })
}

fn one_executor(base: &str) -> String {
    format!("executors:\n- {{name: enc, uses: remote, addresses: ['{base}']}}\n")
}

fn assert_error(r: &support::HttpResponse, status: u16, kind: &str, names: &[&str]) -> Value {
    let body = r.json();
    assert_eq!(r.status, status, "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    let error = body["error"].as_str().unwrap();
    for n in names {
        assert!(error.contains(n), "{n:?} not in {error:?}");
    }
    body
}

#[tokio::test]
async fn huge_and_invalid_top_k_and_parameters_are_400_before_any_executor_runs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = TestServer::start(echo(calls.clone())).await;
    let gw = gateway(
        &one_executor(&exec.base()),
        Limits::default(),
        GatewayLimits::defaults(),
    )
    .await;
    let http = Http::new();
    let url = format!("{}/search", gw.base());
    let search = |params: Value| json!({"data": [{"text": "a horse"}], "parameters": params});
    for big in [json!(1_000_000_000_000_u64), json!(1e9)] {
        let r = http.post(&url, &search(json!({ "top_k": big }))).await;
        assert_error(
            &r,
            400,
            "invalid_parameter",
            &["top_k", "1000", "--max-top-k"],
        );
    }
    for bad in [json!(0), json!(-1), json!("abc"), json!(1.5), json!(true)] {
        let r = http.post(&url, &search(json!({ "top_k": bad }))).await;
        assert_error(&r, 400, "invalid_parameter", &["top_k"]);
    }
    let r = http
        .post(&url, &search(json!({"return_embeddings": "yes"})))
        .await;
    assert_error(&r, 400, "invalid_parameter", &["return_embeddings"]);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // Valid values still work, Jina's float top_k included.
    let r = http.post(&url, &search(json!({"top_k": 3.0}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_5_mb_text_is_a_fast_413_naming_the_flag() {
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = TestServer::start(echo(calls.clone())).await;
    let gw = gateway(
        &one_executor(&exec.base()),
        big_body(),
        GatewayLimits::defaults(),
    )
    .await;
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(111_111);
    let t0 = Instant::now();
    let r = Http::new()
        .post(
            &format!("{}/search", gw.base()),
            &json!({"data": [{"id": "big", "text": text}]}),
        )
        .await;
    assert_error(&r, 413, "limit_exceeded", &["--max-text-bytes", "1048576"]);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_sentencizer_makes_no_more_chunks_than_its_limits() {
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = TestServer::start(echo(calls.clone())).await;
    let yaml = format!(
        "executors:\n- {{name: seg, uses: sentencizer}}\n- {{name: enc, uses: remote, addresses: ['{}']}}\n",
        exec.base()
    );
    let guard = GatewayLimits {
        max_chunks_per_document: 100,
        max_chunks_per_request: 250,
        ..GatewayLimits::defaults()
    };
    let gw = gateway(&yaml, big_body(), guard).await;
    let http = Http::new();
    let url = format!("{}/index", gw.base());
    let doc = |id: &str, n: usize| json!({"id": id, "text": "A short sentence. ".repeat(n)});
    let r = http.post(&url, &json!({"data": [doc("a", 101)]})).await;
    assert_error(
        &r,
        413,
        "limit_exceeded",
        &["--max-chunks-per-document", "100"],
    );
    let r = http
        .post(
            &url,
            &json!({"data": [doc("a", 100), doc("b", 100), doc("c", 100)]}),
        )
        .await;
    assert_error(
        &r,
        413,
        "limit_exceeded",
        &["--max-chunks-per-request", "250"],
    );
    let r = http
        .post(&url, &json!({"data": [doc("a", 100), doc("b", 100)]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["chunks"].as_array().unwrap().len(), 100);
}

/// An executor that records the deadline of each call and then sleeps.
struct Sleepy {
    delay: Duration,
    seen: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl Executor for Sleepy {
    fn call(
        &self,
        _endpoint: &str,
        request: Envelope,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Envelope, ApiError>> + Send {
        self.seen.lock().unwrap().push(deadline.remaining());
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            Ok(request)
        }
    }
}

fn sleepy(delay: Duration, seen: Arc<Mutex<Vec<Option<Duration>>>>) -> Router {
    executor_router(
        "sleepy",
        Arc::new(Sleepy { delay, seen }),
        Readiness::ready(),
        &Limits::default(),
        Router::new(),
    )
}

#[tokio::test]
async fn the_request_deadline_is_a_504_and_reaches_the_executors() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let exec = TestServer::start(sleepy(Duration::from_secs(10), seen.clone())).await;
    // The Flow's key sets the deadline...
    let yaml = format!(
        "with: {{request_timeout_ms: 800}}\n{}",
        one_executor(&exec.base())
    );
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let t0 = Instant::now();
    let r = http
        .post(&format!("{}/search", gw.base()), &docs(&["q".into()]))
        .await;
    let took = t0.elapsed();
    assert_error(&r, 504, "deadline_exceeded", &[]);
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let budget = seen.lock().unwrap()[0].expect("the executor got no deadline header");
    assert!(
        budget <= Duration::from_millis(800) && budget > Duration::from_millis(500),
        "{budget:?}"
    );
    // ...and the gateway's flag wins over it.
    let guard = GatewayLimits {
        request_timeout: Some(Duration::from_millis(300)),
        ..GatewayLimits::defaults()
    };
    let gw = gateway(&yaml, Limits::default(), guard).await;
    let t0 = Instant::now();
    let r = http
        .post(&format!("{}/search", gw.base()), &docs(&["q".into()]))
        .await;
    assert_error(&r, 504, "deadline_exceeded", &[]);
    assert!(
        t0.elapsed() < Duration::from_millis(750),
        "{:?}",
        t0.elapsed()
    );
    assert!(seen.lock().unwrap()[1].unwrap() <= Duration::from_millis(300));
}

/// A "stalled" server, as a SIGSTOPped process: the kernel accepts connections, nobody reads.
async fn stalled() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_stalled_shard_is_cut_off_by_the_per_call_timeout_and_named() {
    let live = TestServer::start(echo(Arc::default())).await;
    let (stalled_addr, _task) = stalled().await;
    let yaml = format!(
        "with: {{timeout_ms: 500}}\nexecutors:\n- {{name: indexer, uses: remote, shards: 2, addresses: [['{}'], ['http://{stalled_addr}']]}}\n",
        live.base()
    );
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let t0 = Instant::now();
    let r = Http::new()
        .post(&format!("{}/search", gw.base()), &docs(&["q".into()]))
        .await;
    let took = t0.elapsed();
    let body = r.json();
    assert!(matches!(r.status, 503 | 504), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("indexer shard 1") && error.contains(&stalled_addr.to_string()),
        "{error}"
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// The documents an executor stored, by id.
type Store = Arc<Mutex<BTreeSet<String>>>;

fn storing(store: Store) -> Router {
    executor_app(move |_e, env: Envelope| {
        let store = store.clone();
        async move {
            store
                .lock()
                .unwrap()
                .extend(env.data.iter().map(|d| d.id.clone()));
            Ok(env)
        }
    })
}

async fn wait_ready(http: &Http, url: &str) {
    let t0 = Instant::now();
    while http.get(url).await.status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_shard_down_lists_exactly_what_was_not_written_and_a_retry_completes_it() {
    let (shard0, shard1, ranked): (Store, Store, Store) = Default::default();
    let s0 = TestServer::start(storing(shard0.clone())).await;
    let s1 = TestServer::start(storing(shard1.clone())).await;
    let ranker = TestServer::start(storing(ranked.clone())).await;
    let yaml = format!(
        "with: {{health_interval_ms: 50, request_size: 8}}\nexecutors:\n- {{name: indexer, uses: remote, shards: 2, addresses: [['{}'], ['{}']]}}\n- {{name: ranker, uses: remote, addresses: ['{}']}}\n",
        s0.base(),
        s1.base(),
        ranker.base()
    );
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let ids: Vec<String> = (0..40).map(|i| format!("doc-{i}")).collect();
    let on_1: Vec<String> = ids
        .iter()
        .filter(|id| shard_of(id, 2) == 1)
        .cloned()
        .collect();
    assert!(!on_1.is_empty() && on_1.len() < ids.len());
    let s1_addr = s1.addr;
    s1.kill();
    drop(s1);

    let r = http
        .post(&format!("{}/index", gw.base()), &docs(&ids))
        .await;
    let body = assert_error(
        &r,
        503,
        "partial_write",
        &["indexer shard 1", &s1_addr.to_string()],
    );
    let not_written: Vec<String> = serde_json::from_value(body["not_written"].clone()).unwrap();
    assert_eq!(
        not_written, on_1,
        "not_written must be exactly shard 1's documents"
    );
    // The documents shard 0 stored went on to the ranker: nothing stored lacks its content.
    let on_0: BTreeSet<String> = ids
        .iter()
        .filter(|id| !on_1.contains(id))
        .cloned()
        .collect();
    assert_eq!(*shard0.lock().unwrap(), on_0);
    assert_eq!(*ranked.lock().unwrap(), on_0);

    // The shard comes back on its address; the same request completes the write.
    let _s1 = TestServer::start_on(s1_addr, storing(shard1.clone())).await;
    wait_ready(&http, &format!("{}/readyz", gw.base())).await;
    let r = http
        .post(&format!("{}/index", gw.base()), &docs(&ids))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let indexed: BTreeSet<String> = shard0
        .lock()
        .unwrap()
        .union(&shard1.lock().unwrap())
        .cloned()
        .collect();
    assert_eq!(indexed, all);
    assert_eq!(*ranked.lock().unwrap(), all);

    // The ranker down: nothing of the write completed, and the error says so.
    ranker.kill();
    let more: Vec<String> = (0..5).map(|i| format!("late-{i}")).collect();
    let r = http
        .post(&format!("{}/index", gw.base()), &docs(&more))
        .await;
    let body = assert_error(&r, 503, "partial_write", &["ranker shard 0"]);
    let not_written: Vec<String> = serde_json::from_value(body["not_written"].clone()).unwrap();
    assert_eq!(not_written, more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_an_overloaded_replica_stay_a_small_fraction_of_calls() {
    let calls = Arc::new(AtomicUsize::new(0));
    let overloaded = {
        let calls = calls.clone();
        executor_app(move |_e, _env: Envelope| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<Envelope, _>(ApiError::Overloaded("busy".into()))
            }
        })
    };
    let exec = TestServer::start(overloaded).await;
    let yaml = format!("with: {{retries: 2}}\n{}", one_executor(&exec.base()));
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let requests = 400;
    let sent = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, sent) = (http.clone(), sent.clone());
        let url = format!("{}/search", gw.base());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while sent.fetch_add(1, Ordering::Relaxed) < requests {
                let r = http.post(&url, &docs(&["q".into()])).await;
                statuses.push((r.status, r.headers.contains_key("retry-after")));
                if t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            statuses
        }));
    }
    let mut answered = 0;
    for c in clients {
        for (status, retry_after) in c.await.unwrap() {
            assert_eq!(status, 429);
            assert!(retry_after);
            answered += 1;
        }
    }
    let calls = calls.load(Ordering::Relaxed);
    let retries = calls - answered;
    let fraction = retries as f64 / answered as f64;
    println!(
        "{answered} requests, {calls} executor calls, {retries} retries ({:.1}%) in {:?}",
        fraction * 100.0,
        t0.elapsed()
    );
    // Without a budget every request would be tried 3 times: 200% retries.
    assert!(fraction < 0.25, "{retries} retries for {answered} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_concurrent_requests_the_gateway_sheds_with_429_and_stays_ready() {
    let exec = TestServer::start(sleepy(Duration::from_millis(300), Arc::default())).await;
    let limits = Limits {
        max_concurrent_requests: 4,
        ..Limits::default()
    };
    let gw = gateway(
        &one_executor(&exec.base()),
        limits,
        GatewayLimits::defaults(),
    )
    .await;
    let http = Http::new();
    let t0 = Instant::now();
    let mut requests = Vec::new();
    for i in 0..24 {
        let http = http.clone();
        let url = format!("{}/search", gw.base());
        requests.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                http.post(&url, &docs(&[format!("q{i}")])),
            )
            .await
            .expect("a request hung");
            (r.status, r.headers.get("retry-after").cloned())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = http.get(&format!("{}/readyz", gw.base())).await;
    assert_eq!(
        ready.status, 200,
        "/readyz must answer while the gateway sheds"
    );
    let (mut ok, mut shed) = (0, 0);
    for r in requests {
        match r.await.unwrap() {
            (200, _) => ok += 1,
            (429, Some(after)) => {
                assert_eq!(after, "1");
                shed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 4 && shed >= 1, "{ok} answered, {shed} shed");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}
