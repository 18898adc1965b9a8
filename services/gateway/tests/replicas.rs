//! Replica balancing: losing a replica under load fails no request, it rejoins after a restart,
//! and a slow replica gets a small share.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use flowmesh_shared::Envelope;
use support::{docs, executor_app, Http, TestGateway, TestServer};

fn counting(count: Arc<AtomicUsize>, delay: Duration) -> Router {
    executor_app(move |_e, env: Envelope| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(env)
        }
    })
}

/// Two replicas that count their calls and answer after `delays`, and a gateway over them with
/// the Flow settings `with`: `(calls, replicas, gateway)`.
async fn two_replicas(
    delays: [Duration; 2],
    with: &str,
) -> ([Arc<AtomicUsize>; 2], [TestServer; 2], TestGateway) {
    let calls: [Arc<AtomicUsize>; 2] = Default::default();
    let a = TestServer::start(counting(calls[0].clone(), delays[0])).await;
    let b = TestServer::start(counting(calls[1].clone(), delays[1])).await;
    let gw = TestGateway::start(&format!(
        "with: {{{with}}}\nexecutors:\n- {{name: enc, uses: remote, replicas: 2, addresses: ['{}', '{}']}}\n",
        a.base(),
        b.base()
    ))
    .await;
    (calls, [a, b], gw)
}

/// Runs `total` searches from `concurrency` clients; returns the statuses of failed ones.
async fn load(
    gw: &TestGateway,
    total: usize,
    concurrency: usize,
    sent: Arc<AtomicUsize>,
) -> Vec<String> {
    let http = Http::new();
    let mut clients = Vec::new();
    for c in 0..concurrency {
        let http = http.clone();
        let url = gw.url("/search");
        let sent = sent.clone();
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = http.post(&url, &docs(&[format!("c{c}-q{i}")])).await;
                if r.status != 200 {
                    failures.push(format!(
                        "{}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_fails_no_request_and_it_rejoins_after_restart() {
    let millis = Duration::from_millis(1);
    let ([_, b_calls], [a, b], gw) =
        two_replicas([millis, millis], "health_interval_ms: 100").await;
    let b_addr = b.addr;

    let total = 600;
    let sent = Arc::new(AtomicUsize::new(0));
    let killer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            // Kill replica b once the load is well under way.
            while sent.load(Ordering::Relaxed) < 150 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            b.kill();
        })
    };
    let failures = load(&gw, total, 4, sent).await;
    killer.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        b_calls.load(Ordering::Relaxed) > 0,
        "b served before it was killed"
    );
    let replicas = &gw.flow.status()["executors"][0]["shards"][0];
    assert_eq!(
        replicas[1]["up"], false,
        "the dead replica left the pool: {replicas}"
    );

    // Restart b on the same address: the health check brings it back and it gets traffic again.
    let b2_calls = Arc::new(AtomicUsize::new(0));
    let _b2 =
        TestServer::start_on(b_addr, counting(b2_calls.clone(), Duration::from_millis(1))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.flow.status()["executors"][0]["shards"][0][1]["up"] != true {
        assert!(Instant::now() < deadline, "replica did not rejoin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = load(&gw, 200, 4, Arc::new(AtomicUsize::new(0))).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        b2_calls.load(Ordering::Relaxed) > 0,
        "the restarted replica receives requests again"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_a_small_share() {
    let delays = [Duration::from_millis(1), Duration::from_millis(40)];
    let ([fast_calls, slow_calls], _servers, gw) = two_replicas(delays, "").await;
    let failures = load(&gw, 300, 4, Arc::new(AtomicUsize::new(0))).await;
    assert!(failures.is_empty(), "{failures:?}");
    let (f, s) = (
        fast_calls.load(Ordering::Relaxed),
        slow_calls.load(Ordering::Relaxed),
    );
    assert_eq!(f + s, 300);
    assert!(
        s * 5 < f + s,
        "the slow replica got {s} of {} requests",
        f + s
    );
}

#[tokio::test]
async fn no_healthy_replica_is_a_clear_503() {
    let dead = TestServer::start(counting(Default::default(), Duration::ZERO)).await;
    let base = dead.base();
    dead.kill();
    drop(dead);
    let gw = TestGateway::start(&format!(
        "with: {{retries: 1}}\nexecutors:\n- {{name: enc, uses: remote, addresses: ['{base}']}}\n"
    ))
    .await;
    let r = Http::new()
        .post(&gw.url("/search"), &docs(&["q".into()]))
        .await;
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["kind"], "unavailable");
    assert!(body["error"].as_str().unwrap().contains("enc"), "{body}");
    let ready = Http::new().get(&gw.url("/readyz")).await;
    assert_eq!(ready.status, 503);
}
