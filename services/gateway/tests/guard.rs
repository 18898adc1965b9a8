//! The gateway under hostile and unlucky traffic: limits, deadlines, stalled shards and
//! replicas. Real HTTP servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use flowmesh_gateway::GatewayLimits;
use flowmesh_shared::Limits;
use support::hostile::{
    assert_error, big_body, echo, echo_gateway, gateway, one_executor, sleepy, stalled,
};
use support::{docs, Http, TestServer};

#[tokio::test]
async fn huge_and_invalid_top_k_and_parameters_are_400_before_any_executor_runs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (_exec, gw) =
        echo_gateway(calls.clone(), Limits::default(), GatewayLimits::defaults()).await;
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
    let (_exec, gw) = echo_gateway(calls.clone(), big_body(), GatewayLimits::defaults()).await;
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
        took >= Duration::from_millis(700) && took < Duration::from_millis(3000),
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
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(seen.lock().unwrap()[1].unwrap() <= Duration::from_millis(300));
}

/// A gateway serving `flow`, where `{live}` stands for the address of an echo executor that
/// counts its calls in `calls`, and `{stalled}` for a server that accepts and never answers:
/// the gateway, the stalled address, and what keeps the executors up.
async fn live_and_stalled(
    calls: Arc<AtomicUsize>,
    flow: &str,
) -> (TestServer, SocketAddr, (TestServer, JoinHandle<()>)) {
    let live = TestServer::start(echo(calls)).await;
    let (stalled_addr, task) = stalled().await;
    let yaml = flow
        .replace("{live}", &live.base())
        .replace("{stalled}", &format!("http://{stalled_addr}"));
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    (gw, stalled_addr, (live, task))
}

#[tokio::test]
async fn a_stalled_shard_is_cut_off_by_the_per_call_timeout_and_named() {
    let (gw, stalled_addr, _servers) = live_and_stalled(
        Arc::default(),
        "with: {timeout_ms: 500}\nexecutors:\n- {name: indexer, uses: remote, shards: 2, addresses: [['{live}'], ['{stalled}']]}\n",
    )
    .await;
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
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_is_cut_off_and_the_call_retried_on_another() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gw, _stalled_addr, _servers) = live_and_stalled(
        calls.clone(),
        "with: {timeout_ms: 300}\nexecutors:\n- {name: enc, uses: remote, replicas: 2, addresses: ['{live}', '{stalled}']}\n",
    )
    .await;
    let http = Http::new();
    for i in 0..6 {
        let t0 = Instant::now();
        let r = http
            .post(&format!("{}/search", gw.base()), &docs(&[format!("q{i}")]))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // A stalled replica costs a 300 ms per-call timeout, not the 60 s deadline (with slack
        // for a loaded host).
        assert!(
            t0.elapsed() < Duration::from_millis(2000),
            "{:?}",
            t0.elapsed()
        );
    }
    assert_eq!(calls.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn the_openapi_document_says_what_the_server_accepts_and_answers() {
    let (_exec, gw) =
        echo_gateway(Arc::default(), Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let url = format!("{}/index", gw.base());
    // Jina clients' nulls are read as empty lists, and the schema allows them.
    let jina = json!({"data": [{"id": "a", "text": "x", "matches": null, "chunks": null, "embedding": null}]});
    assert_eq!(http.post(&url, &jina).await.status, 200);
    let spec: Value = serde_json::from_str(&flowmesh_gateway::openapi_json()).unwrap();
    let schemas = &spec["components"]["schemas"];
    for list in ["matches", "chunks"] {
        let types = &schemas["Document"]["properties"][list]["type"];
        assert_eq!(*types, json!(["array", "null"]), "{list}");
    }
    // A body without documents is refused, and the request schemas require one.
    for empty in [json!({}), json!({"data": []})] {
        assert_eq!(http.post(&url, &empty).await.status, 400, "{empty}");
    }
    for schema in ["EnvelopeRequest", "PostRequest"] {
        assert_eq!(schemas[schema]["required"], json!(["data"]), "{schema}");
        assert_eq!(
            schemas[schema]["properties"]["data"]["minItems"], 1,
            "{schema}"
        );
    }
    for path in ["/index", "/search", "/update", "/delete", "/post"] {
        let responses = &spec["paths"][path]["post"]["responses"];
        for status in ["200", "400", "405", "413", "429", "503", "504"] {
            assert!(responses.get(status).is_some(), "{path} lacks {status}");
        }
    }
    assert!(spec["paths"]["/post"]["post"]["responses"]
        .get("404")
        .is_some());
}
