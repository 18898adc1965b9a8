//! Serving a service: the common command-line options, the executor protocol's routes, and a
//! serve loop with graceful shutdown.
//!
//! Every service prints `NAME listening on http://ADDR` as its first line on stdout, which is how
//! the launcher learns the port of a service it started on port 0.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use crate::api::Envelope;
use crate::codec::{Negotiated, Reply};
use crate::error::ApiError;
use crate::health::{health_router, Readiness};
use crate::telemetry::{metrics_router, track_requests};

/// Options every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "FLOWMESH_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "FLOWMESH_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// An executor: something the Flow sends envelopes to.
///
/// Endpoints an executor does not handle must return the envelope unchanged, as Jina's executors
/// do, so that every endpoint can flow through every executor of a Flow.
pub trait Executor: Send + Sync + 'static {
    /// Handles one request to `endpoint` (without its leading slash: `index`, `search`, ...).
    fn call(
        &self,
        endpoint: &str,
        request: Envelope,
    ) -> impl Future<Output = Result<Envelope, ApiError>> + Send;
}

/// The routes of an executor service: `POST /{endpoint}`, `/livez`, `/readyz`, `/metrics`, and
/// the service's own `extra` routes (such as the indexer's `GET /stats`), all counted and timed.
pub fn executor_router<E: Executor>(
    service: &'static str,
    executor: Arc<E>,
    readiness: Readiness,
    max_body_bytes: usize,
    extra: Router,
) -> Router {
    Router::new()
        .route("/{endpoint}", post(executor_call::<E>))
        .with_state(executor)
        .merge(extra)
        .merge(health_router(readiness))
        .merge(metrics_router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            track_requests(service, req, next)
        }))
}

async fn executor_call<E: Executor>(
    State(executor): State<Arc<E>>,
    Path(endpoint): Path<String>,
    request: Negotiated<Envelope>,
) -> Result<Reply<Envelope>, ApiError> {
    let reply = request.reply;
    crate::trace::set_current_attribute(|| {
        opentelemetry::KeyValue::new("flowmesh.documents", request.body.data.len() as i64)
    });
    let response = executor.call(&endpoint, request.body).await?;
    Ok(Reply(reply, response))
}

/// The JSON 404 for a path no route matches.
pub async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::UnknownEndpoint(uri.path().to_owned())
}

/// The JSON 405 for a known path used with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Binds `addr` and prints the `listening on` line the launcher waits for.
pub async fn bind(service: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{service} listening on http://{local}")?;
    out.flush()?;
    tracing::info!(%local, "{service} listening");
    Ok(listener)
}

/// Serves `app` on `listener` with `TCP_NODELAY` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (printing the `listening on` line) and serves `app` until `shutdown` resolves:
/// the tail of every service's `run`.
pub async fn bind_and_serve(
    service: &str,
    addr: SocketAddr,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind(service, addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    serve(listener, app, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
