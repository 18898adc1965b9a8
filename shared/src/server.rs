//! Serving a service: the common command-line options, the executor protocol's routes, and a
//! serve loop with graceful shutdown.
//!
//! Every service holds under abusive traffic the same way: request limits ([`Limits`]) are
//! checked before any work, requests beyond `--max-concurrent-requests` are shed at once with
//! 429 and `Retry-After` ([`shed_beyond`]), a connection that does not send its headers within
//! `--header-timeout-secs` (or sits idle that long between requests) is closed by hyper, at most
//! `--max-connections` are open at once, and an executor stops a call whose deadline
//! ([`Deadline`]) has passed.
//!
//! Every service prints `NAME listening on http://ADDR` as its first line on stdout, which is how
//! the launcher learns the port of a service it started on port 0.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::Envelope;
use crate::codec::{Negotiated, Reply};
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::health::{health_router, Readiness};
pub use crate::limits::Limits;
use crate::telemetry::{metrics_router, track_requests};

/// Options every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "FLOWMESH_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Request and connection limits.
    #[command(flatten)]
    pub limits: Limits,
}

/// An executor: something the Flow sends envelopes to.
///
/// Endpoints an executor does not handle must return the envelope unchanged, as Jina's executors
/// do, so that every endpoint can flow through every executor of a Flow.
pub trait Executor: Send + Sync + 'static {
    /// Handles one request to `endpoint` (without its leading slash: `index`, `search`, ...).
    ///
    /// The request has passed [`Limits::check`]. The call future is dropped when `deadline`
    /// passes or the caller hangs up; work that runs elsewhere (a model's thread, the blocking
    /// pool) should look at `deadline` between units of work and stop once it has passed.
    fn call(
        &self,
        endpoint: &str,
        request: Envelope,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Envelope, ApiError>> + Send;
}

/// What the executor route shares.
struct ExecutorState<E> {
    executor: Arc<E>,
    limits: Limits,
}

/// The routes of an executor service: `POST /{endpoint}`, `/livez`, `/readyz`, `/metrics`, and
/// the service's own `extra` routes (such as the indexer's `GET /stats`), all counted and timed.
/// Calls to `/{endpoint}` are checked against `limits` and shed beyond
/// `limits.max_concurrent_requests`.
pub fn executor_router<E: Executor>(
    service: &'static str,
    executor: Arc<E>,
    readiness: Readiness,
    limits: &Limits,
    extra: Router,
) -> Router {
    let state = Arc::new(ExecutorState {
        executor,
        limits: limits.clone(),
    });
    Router::new()
        .route("/{endpoint}", post(executor_call::<E>))
        .route_layer(shed_beyond(limits.max_concurrent_requests))
        .with_state(state)
        .merge(extra)
        .merge(health_router(readiness))
        .merge(metrics_router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            track_requests(service, req, next)
        }))
}

async fn executor_call<E: Executor>(
    State(state): State<Arc<ExecutorState<E>>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    request: Negotiated<Envelope>,
) -> Result<Reply<Envelope>, ApiError> {
    let deadline = Deadline::from_headers(&headers)?;
    if deadline.is_expired() {
        return Err(deadline.exceeded(&format!("/{endpoint}")));
    }
    state.limits.check(&request.body)?;
    let reply = request.reply;
    crate::trace::set_current_attribute(|| {
        opentelemetry::KeyValue::new("flowmesh.documents", request.body.data.len() as i64)
    });
    let work = state.executor.call(&endpoint, request.body, deadline);
    let response = deadline.run(&format!("/{endpoint}"), work).await?;
    Ok(Reply(reply, response))
}

/// The middleware behind [`shed_beyond`].
type ShedFn =
    fn(State<Arc<Semaphore>>, Request, Next) -> futures::future::BoxFuture<'static, Response>;

/// The layer [`shed_beyond`] returns.
pub type ShedLayer =
    axum::middleware::FromFnLayer<ShedFn, Arc<Semaphore>, (State<Arc<Semaphore>>, Request)>;

/// A layer that lets at most `max` requests through at once and answers the others at once
/// with 429 `overloaded` and `Retry-After`, rather than queueing them without bound. Put it on
/// the work routes only (`route_layer`), so that health checks and metrics always answer.
pub fn shed_beyond(max: usize) -> ShedLayer {
    fn shed(
        State(permits): State<Arc<Semaphore>>,
        req: Request,
        next: Next,
    ) -> futures::future::BoxFuture<'static, Response> {
        Box::pin(async move {
            let Ok(_permit) = permits.try_acquire_owned() else {
                metrics::counter!("flowmesh_requests_shed_total").increment(1);
                return ApiError::Overloaded(
                    "too many requests in flight (--max-concurrent-requests, \
                     FLOWMESH_MAX_CONCURRENT_REQUESTS); retry later"
                        .into(),
                )
                .into_response();
            };
            next.run(req).await
        })
    }
    axum::middleware::from_fn_with_state(Arc::new(Semaphore::new(max.max(1))), shed as ShedFn)
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

/// Serves `app` on `listener` over HTTP/1.1 with `TCP_NODELAY` until `shutdown` resolves, then
/// drains the open connections.
///
/// At most `limits.max_connections` connections are open at once (the next waits in the accept
/// queue), and hyper closes a connection that has not sent a request's headers within
/// `limits.header_timeout_secs` of opening or of its previous answer: slow-header and idle
/// keep-alive connections do not pile up. A body must arrive whole within
/// `limits.body_timeout_secs` (408 after it).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout());
    let app = app.layer(axum::Extension(limits.body_timeout()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin, as axum::serve does.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Binds `addr` (printing the `listening on` line) and serves `app` until `shutdown` resolves:
/// the tail of every service's `run`.
pub async fn bind_and_serve(
    service: &str,
    args: &ServeArgs,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = args.listen;
    let listener = bind(service, addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    serve(listener, app, &args.limits, shutdown).await
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
