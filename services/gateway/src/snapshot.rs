//! `GET /snapshot/{executor}/{shard}`: a consistent snapshot of one shard of an executor that
//! keeps data, streamed from one ready copy's `GET /mirror/snapshot` (called with the mesh
//! token), with the position it contains (`x-flowmesh-log-seq`) and the log it belongs to
//! (`x-flowmesh-log-id`). `flowmesh snapshot` calls it for every shard. It needs a read-write
//! API key when keys are on (a read-only key is answered 404, as for every unclassified route).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use flowmesh_shared::mirror::SEQ_HEADER;
use flowmesh_shared::secret::SecretSet;
use flowmesh_shared::tls::ClientTlsArgs;
use flowmesh_shared::ApiError;

use crate::auth::{caller_of, Caller};
use crate::http::AppState;

/// The header naming the log a snapshot's position belongs to (empty when the copy is not mirrored).
pub const LOG_ID_HEADER: &str = "x-flowmesh-log-id";

/// How long a copy may take to answer `/readyz` or to start sending its snapshot.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The client the gateway fetches snapshots with: the mesh token, and the executors' CA.
#[derive(Clone)]
pub struct SnapshotProxy {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    mesh: Option<SecretSet>,
}

impl std::fmt::Debug for SnapshotProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotProxy").finish_non_exhaustive()
    }
}

impl SnapshotProxy {
    /// A client verifying `https://` copies with `tls` and sending the first of `mesh`.
    pub fn new(tls: &ClientTlsArgs, mesh: Option<SecretSet>) -> anyhow::Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let https = flowmesh_shared::tls::https_connector(conn, tls.client_config()?);
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
            mesh,
        })
    }

    async fn get(&self, url: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut req = Request::get(url)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        if let Some(token) = self.mesh.as_ref().and_then(SecretSet::first) {
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                value.set_sensitive(true);
                req.headers_mut().insert(header::AUTHORIZATION, value);
            }
        }
        match tokio::time::timeout(CALL_TIMEOUT, self.http.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(_) => Err(format!("no answer in {}s", CALL_TIMEOUT.as_secs())),
        }
    }
}

/// Streams a snapshot of shard `shard` of `executor` from one of its ready copies.
pub async fn download(
    State(s): State<AppState>,
    Path((executor, shard)): Path<(String, String)>,
    caller: Option<Extension<Caller>>,
    proxy: Option<Extension<SnapshotProxy>>,
) -> Result<Response, ApiError> {
    if !caller_of(caller.as_deref()).may_write() {
        return Err(crate::auth::forbidden("/snapshot"));
    }
    let spec = s.flow.spec();
    let Some(e) = spec.executors.iter().find(|e| e.name == executor) else {
        return Err(ApiError::NotFound(format!(
            "the Flow has no executor {executor:?}"
        )));
    };
    if !e.is_stateful() {
        return Err(ApiError::BadRequest(format!(
            "executor {executor:?} keeps no data (it is stateless): there is nothing to snapshot"
        )));
    }
    let addresses = e
        .shard_addresses()
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::NotFound(format!("executor {executor:?} has no addresses")))?;
    let Some(replicas) = shard.parse::<usize>().ok().and_then(|i| addresses.get(i)) else {
        return Err(ApiError::NotFound(format!(
            "executor {executor:?} has shards 0 to {}, not {shard:?}",
            addresses.len().saturating_sub(1)
        )));
    };
    let Some(Extension(proxy)) = proxy else {
        return Err(ApiError::Unavailable {
            executor,
            message: "this gateway has no client for snapshots".into(),
        });
    };
    // A ready copy first (it holds every acknowledged write); any that answers otherwise.
    let mut ready = Vec::new();
    let mut others = Vec::new();
    for base in replicas {
        let base = base.trim_end_matches('/');
        match proxy.get(&format!("{base}/readyz")).await {
            Ok(r) if r.status() == StatusCode::OK => ready.push(base),
            _ => others.push(base),
        }
    }
    let mut failures = Vec::new();
    for base in ready.into_iter().chain(others) {
        match proxy.get(&format!("{base}/mirror/snapshot")).await {
            Ok(r) if r.status() == StatusCode::OK => {
                let (parts, body) = r.into_parts();
                let mut out = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/octet-stream");
                for name in [SEQ_HEADER, LOG_ID_HEADER, "content-length"] {
                    if let Some(v) = parts.headers.get(name) {
                        out = out.header(name, v);
                    }
                }
                tracing::info!(executor = %executor, shard = %shard, copy = %base, "streaming a shard snapshot");
                return out
                    .body(Body::new(body))
                    .map_err(|e| ApiError::Internal(e.to_string()));
            }
            Ok(r) => failures.push(format!("{base}: status {}", r.status())),
            Err(e) => failures.push(format!("{base}: {e}")),
        }
    }
    Err(ApiError::Unavailable {
        executor,
        message: format!(
            "no copy of shard {shard} gave a snapshot ({})",
            failures.join("; ")
        ),
    })
}
