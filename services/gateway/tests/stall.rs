//! A real indexer shard stopped with SIGSTOP (its kernel still accepts connections, nothing
//! answers) is cut off by the per-call timeout, named in the error, and used again after SIGCONT.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use flowmesh_gateway::GatewayLimits;
use flowmesh_shared::Limits;
use support::hostile::{free_port, gateway, service, wait_ready};
use support::Http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_shard_is_cut_off_named_and_used_again_after_sigcont() {
    let (_a, a) = service("flowmesh-indexer", free_port(), &[]);
    let (b_child, b) = service("flowmesh-indexer", free_port(), &[]);
    let yaml = format!(
        "with: {{timeout_ms: 1000, health_interval_ms: 100}}\nexecutors:\n- {{name: indexer, uses: remote, shards: 2, addresses: [['{a}'], ['{b}']]}}\n"
    );
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let ready = format!("{}/readyz", gw.base());
    wait_ready(&http, &ready).await;
    let url = format!("{}/search", gw.base());
    let query = json!({"data": [{"id": "q", "embedding": [0.1, 0.2, 0.3]}]});
    let search = || http.post(&url, &query);
    let r = search().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let pid = Pid::from_raw(i32::try_from(b_child.id().unwrap()).unwrap());
    support::sigstop(pid.as_raw()).await;
    let t0 = Instant::now();
    let r = search().await;
    let took = t0.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    let body = r.json();
    assert!(matches!(r.status, 503 | 504), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("indexer shard 1") && error.contains(&b),
        "{error}"
    );
    // Cut off by the 1 s per-call timeout, far under the 60 s request deadline.
    assert!(took < Duration::from_millis(2500), "{took:?}");

    wait_ready(&http, &ready).await;
    let r = search().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
