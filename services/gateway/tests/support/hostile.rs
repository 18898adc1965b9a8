//! Helpers of the hostile-traffic tests: gateways with chosen limits, executors that echo, store,
//! sleep or stall, and error assertions.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::Value;

use flowmesh_gateway::{router, AppState, Flow, FlowSpec, GatewayLimits};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{executor_router, Executor};
use flowmesh_shared::{ApiError, Deadline, Envelope, Limits};

use super::{executor_app, Http, HttpResponse, TestServer};

/// A gateway for `yaml` with the given limits.
pub async fn gateway(yaml: &str, limits: Limits, guard: GatewayLimits) -> TestServer {
    let spec = FlowSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    TestServer::start(router(AppState::new(flow, limits).with_guard(guard))).await
}

pub fn big_body() -> Limits {
    Limits::with_max_body_bytes(64 << 20)
}

/// An executor that counts its calls and answers with what it got.
pub fn echo(count: Arc<AtomicUsize>) -> Router {
    executor_app(move |_e, env: Envelope| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(env)
        }
    })
}

/// An [`echo`] executor counting its calls in `calls`, and a gateway with the given limits in
/// front of it: `(executor, gateway)`.
pub async fn echo_gateway(
    calls: Arc<AtomicUsize>,
    limits: Limits,
    guard: GatewayLimits,
) -> (TestServer, TestServer) {
    let exec = TestServer::start(echo(calls)).await;
    let gw = gateway(&one_executor(&exec.base()), limits, guard).await;
    (exec, gw)
}

/// The ids of `ids` that shard `shard` of `shards` owns; some, not all, or the test proves
/// nothing about one shard failing.
pub fn owned_by(ids: &[String], shard: usize, shards: usize) -> Vec<String> {
    let owned: Vec<String> = ids
        .iter()
        .filter(|id| flowmesh_shared::fanout::shard_of(id, shards) == shard)
        .cloned()
        .collect();
    assert!(!owned.is_empty() && owned.len() < ids.len(), "{owned:?}");
    owned
}

pub fn one_executor(base: &str) -> String {
    format!("executors:\n- {{name: enc, uses: remote, addresses: ['{base}']}}\n")
}

pub fn assert_error(r: &HttpResponse, status: u16, kind: &str, names: &[&str]) -> Value {
    let body = r.json();
    assert_eq!(r.status, status, "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    let error = body["error"].as_str().unwrap();
    for n in names {
        assert!(error.contains(n), "{n:?} not in {error:?}");
    }
    body
}

/// An executor that records the deadline of each call and then sleeps.
pub struct Sleepy {
    delay: Duration,
    seen: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl Executor for Sleepy {
    fn call(
        &self,
        _endpoint: flowmesh_shared::Endpoint,
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

pub fn sleepy(delay: Duration, seen: Arc<Mutex<Vec<Option<Duration>>>>) -> Router {
    executor_router(
        "sleepy",
        Arc::new(Sleepy { delay, seen }),
        Readiness::ready(),
        &Limits::default(),
        Router::new(),
    )
}

/// A "stalled" server, as a SIGSTOPped process: the kernel accepts connections, nobody reads.
pub async fn stalled() -> (SocketAddr, tokio::task::JoinHandle<()>) {
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

/// The documents an executor stored, by id.
pub type Store = Arc<Mutex<BTreeSet<String>>>;

pub fn storing(store: Store) -> Router {
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

pub async fn wait_ready(http: &Http, url: &str) {
    let t0 = Instant::now();
    while http.get(url).await.status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on 127.0.0.1 (bound, then released for a service to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the built service binary `bin` (`flowmesh-indexer`, ...) on `port` with `args`, in
/// memory (no workspace); killed when dropped. Returns it and its base address.
pub fn service(bin: &str, port: u16, args: &[&str]) -> (tokio::process::Child, String) {
    let exe = super::launch::flowmesh().with_file_name(bin);
    let child = tokio::process::Command::new(exe)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env_remove("FLOWMESH_WORKSPACE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"))
}
