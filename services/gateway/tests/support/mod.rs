//! Test support: small real executor servers on 127.0.0.1:0 that can be killed and restarted, a
//! gateway started in-process from Flow YAML, and a JSON HTTP client.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod hostile;
pub mod jina;
pub mod launch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use flowmesh_gateway::{router, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{executor_router, Executor};
use flowmesh_shared::{ApiError, Deadline, Endpoint, Envelope, Limits};

type Handler =
    dyn Fn(String, Envelope) -> BoxFuture<'static, Result<Envelope, ApiError>> + Send + Sync;

/// An executor made of a closure.
pub struct FnExecutor(Arc<Handler>);

impl Executor for FnExecutor {
    fn call(
        &self,
        endpoint: Endpoint,
        request: Envelope,
        _deadline: Deadline,
    ) -> impl Future<Output = Result<Envelope, ApiError>> + Send {
        (self.0)(endpoint.to_string(), request)
    }
}

/// The routes of an executor that runs `f` for every endpoint.
pub fn executor_app<F, Fut>(f: F) -> Router
where
    F: Fn(String, Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Envelope, ApiError>> + Send + 'static,
{
    let handler: Arc<Handler> = Arc::new(move |e, env| Box::pin(f(e, env)));
    executor_router(
        "test-executor",
        Arc::new(FnExecutor(handler)),
        Readiness::ready(),
        &Limits::with_max_body_bytes(1 << 20),
        Router::new(),
    )
}

/// A server whose every connection dies when it is killed, as with a crashed process.
pub struct TestServer {
    pub addr: SocketAddr,
    kill_tx: watch::Sender<bool>,
}

impl TestServer {
    pub async fn start(app: Router) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), app).await
    }

    /// Binds `addr` (reusing it after a kill) and serves `app`.
    pub async fn start_on(addr: SocketAddr, app: Router) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill_tx, kill_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut accept_kill = kill_rx.clone();
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = accept_kill.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let mut conn_kill = kill_rx.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_kill.changed() => {}
                    }
                });
            }
        });
        Self { addr, kill_tx }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the listener and every open connection.
    pub fn kill(&self) {
        let _ = self.kill_tx.send(true);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real executors of a search Flow in this process, each on 127.0.0.1:0: the `hash` encoder
/// (64 dimensions), two indexer shards and a ranker.
pub struct HashExecutors {
    pub encoder: TestServer,
    pub indexers: [TestServer; 2],
    pub ranker: TestServer,
}

impl HashExecutors {
    pub async fn start() -> Self {
        use clap::Parser as _;
        let encoder = flowmesh_encoder::app(&flowmesh_encoder::Config::parse_from([
            "e", "--model", "hash", "--dim", "64",
        ]))
        .unwrap();
        let indexer =
            || flowmesh_indexer::app(&flowmesh_indexer::Config::parse_from(["i"])).unwrap();
        let ranker = flowmesh_ranker::app(&flowmesh_ranker::Config::parse_from(["r"])).unwrap();
        Self {
            encoder: TestServer::start(encoder).await,
            indexers: [
                TestServer::start(indexer()).await,
                TestServer::start(indexer()).await,
            ],
            ranker: TestServer::start(ranker).await,
        }
    }

    /// The Flow over them: encoder, then the indexer's two shards, then the ranker.
    pub fn flow_yaml(&self) -> String {
        format!(
            "executors:\n\
             - {{name: encoder, uses: encoder, addresses: ['{}']}}\n\
             - {{name: indexer, uses: indexer, shards: 2, addresses: [['{}'], ['{}']]}}\n\
             - {{name: ranker, uses: ranker, addresses: ['{}']}}\n",
            self.encoder.base(),
            self.indexers[0].base(),
            self.indexers[1].base(),
            self.ranker.base()
        )
    }
}

/// A gateway serving the Flow in `yaml` on 127.0.0.1:0.
pub struct TestGateway {
    pub server: TestServer,
    pub flow: Arc<Flow>,
}

impl TestGateway {
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_limit(yaml, 1 << 20).await
    }

    pub async fn start_with_limit(yaml: &str, max_body_bytes: usize) -> Self {
        Self::start_with(
            yaml,
            max_body_bytes,
            flowmesh_gateway::auth::ApiKeys::none(),
        )
        .await
    }

    /// A gateway that wants one of `keys`.
    pub async fn start_with_keys(yaml: &str, keys: flowmesh_gateway::auth::ApiKeys) -> Self {
        Self::start_with(yaml, 1 << 20, keys).await
    }

    async fn start_with(
        yaml: &str,
        max_body_bytes: usize,
        keys: flowmesh_gateway::auth::ApiKeys,
    ) -> Self {
        let spec = FlowSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
        let app = router(
            AppState::new(flow.clone(), Limits::with_max_body_bytes(max_body_bytes))
                .with_api_keys(keys),
        );
        Self {
            server: TestServer::start(app).await,
            flow,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base())
    }
}

/// A JSON client, for `http://` and (trusting a test CA) `https://` URLs, that may send the same
/// headers (a key, a token) with every request.
#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: Vec<(String, String)>,
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Http {
    /// A plain-HTTP client (an `https://` URL fails: it trusts no CA).
    pub fn new() -> Self {
        Self::with_tls(None)
    }

    /// A client that verifies `https://` servers against the CA certificate(s) in `ca` (PEM).
    pub fn trusting(ca: &std::path::Path) -> Self {
        Self::with_tls(Some(
            flowmesh_shared::tls::client_config_with(ca, None, None).unwrap(),
        ))
    }

    fn with_tls(config: Option<Arc<rustls::ClientConfig>>) -> Self {
        let config = config.map_or_else(
            || {
                rustls::ClientConfig::builder_with_provider(flowmesh_shared::tls::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            },
            Arc::unwrap_or_clone,
        );
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            headers: Vec::new(),
        }
    }

    /// This client, sending `name: value` with every request.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// [`send_with`](Self::send_with), with the transport error instead of a panic.
    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<HttpResponse, String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await.map_err(|e| {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(inner) = cur {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                cur = inner.source();
            }
            s
        })?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        self.send_with(method, url, content_type, &[], body).await
    }

    /// [`send`](Self::send) with extra `headers`.
    pub async fn send_with(
        &self,
        method: &str,
        url: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", content_type);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = self
            .client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, body: &Value) -> HttpResponse {
        self.send(
            "POST",
            url,
            "application/json",
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn get(&self, url: &str) -> HttpResponse {
        self.send("GET", url, "application/json", Bytes::new())
            .await
    }
}

/// `{"data": [{"id": ..., "text": ...}, ...]}` for the given ids.
pub fn docs(ids: &[String]) -> Value {
    let data: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "text": format!("text of {id}")}))
        .collect();
    serde_json::json!({ "data": data })
}

/// The ids of `data` in an answer.
pub fn ids(answer: &Value) -> Vec<String> {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends SIGSTOP to process `pid` and waits (at most 5 s) until every one of its threads is
/// stopped: on a loaded machine a thread that was running keeps going until the signal reaches
/// it, and could still answer a request sent right after `kill`.
pub async fn sigstop(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !every_thread_stopped(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} did not stop within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Whether every thread of `pid` is in state `T` (stopped), from /proc/PID/task/*/stat.
fn every_thread_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

/// `(field, address)` of every replica in the gateway's `/status`, where `field` is an executor's
/// `name` or `uses`.
pub fn executor_addresses(status: &Value, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in status["executors"].as_array().unwrap() {
        for shard in e["shards"].as_array().unwrap() {
            for r in shard.as_array().unwrap() {
                out.push((
                    e[field].as_str().unwrap().to_owned(),
                    r["address"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}
