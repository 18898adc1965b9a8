//! Failures under load: honest partial writes, the retry budget, load shedding. Real HTTP servers
//! on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowmesh_gateway::GatewayLimits;
use flowmesh_shared::{ApiError, Envelope, Limits};
use support::hostile::{
    assert_error, gateway, one_executor, owned_by, sleepy, storing, wait_ready, Store,
};
use support::{docs, executor_app, Http, TestServer};

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
    let on_1 = owned_by(&ids, 1, 2);
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
