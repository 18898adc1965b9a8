//! Logging, the access log and Prometheus metrics, set up the same way by every service.
//!
//! Metrics go to one process-wide recorder, rendered at `/metrics` in Prometheus' text format,
//! every metric with its `# HELP` ([`describe_metrics`]), followed by the `process_*` metrics
//! of the process (read from `/proc` at scrape time); each service sets `flowmesh_build_info`.
//! Every HTTP request is counted and timed by [`track_requests`], labelled with the service name
//! and its route, written to the access log (target `flowmesh::access`), and, when traces are
//! on, gets a server span (see [`crate::trace`]).

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::context::FutureExt as _;

use crate::endpoint::Endpoint;

/// Latency buckets in seconds, from 50 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of `flowmesh_encoder_batch_size`, in inputs: powers of two up to 1024, beyond any
/// `--max-batch` in use. A histogram, not a summary: a summary's quantiles cover only the last
/// minute while its sum and count cover the process' life (docs/operations.md).
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Buckets of `flowmesh_encoder_padded_token_share`: the share of a model call's tokens that is
/// padding, from 0 to 1.
const PADDED_SHARE_BUCKETS: &[f64] = &[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0];

/// The tracing target of the access log: one event per HTTP request, once it is answered.
pub const ACCESS_TARGET: &str = "flowmesh::access";

/// Starts logging to stderr in the format `FLOWMESH_LOG_FORMAT` names (text by default),
/// filtered by `RUST_LOG` (default `info`). Binaries call [`crate::logging::init`] with their
/// `--log-format` instead. Safe to call twice.
pub fn init_tracing() {
    crate::logging::init(crate::logging::LogFormat::from_env());
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // The bucket lists are constant and not empty: no call can fail.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flowmesh_encoder_batch_size".into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flowmesh_encoder_padded_token_share".into()),
                        PADDED_SHARE_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests that embed several services);
            // the handle still renders what this recorder sees.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            handle
        })
        .clone()
}

/// Something that sets gauges from state it reads when `/metrics` is scraped.
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

static SCRAPE_HOOKS: Mutex<Vec<ScrapeHook>> = Mutex::new(Vec::new());

/// Runs `hook` before every render of `/metrics`: for gauges that are cheap to read at scrape
/// time but not worth updating on every request (index and store sizes). Hooks run on a
/// blocking thread, so they may take locks that a long operation holds.
pub fn on_scrape(hook: impl Fn() + Send + Sync + 'static) {
    SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Box::new(hook));
}

/// The metrics in Prometheus' text format, after running the [`on_scrape`] hooks.
pub async fn render() -> String {
    let handle = metrics_handle();
    let has_hooks = !SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty();
    if has_hooks {
        let ran = tokio::task::spawn_blocking(|| {
            for hook in SCRAPE_HOOKS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                hook();
            }
        })
        .await;
        if let Err(e) = ran {
            tracing::warn!(error = %e, "a metrics scrape hook failed");
        }
    }
    let mut text = handle.render();
    text.push_str(&crate::process_metrics::render());
    text
}

/// Routes `GET /metrics`, installing the recorder now: what is recorded before it exists is lost.
pub fn metrics_router() -> Router {
    let _ = metrics_handle();
    Router::new().route("/metrics", get(render))
}

/// Sets `flowmesh_build_info{version,service} 1` for `service` (each service of a process has
/// its own series).
pub fn build_info(service: &'static str) {
    // Recorded before the recorder exists, it would be lost.
    let _ = metrics_handle();
    metrics::gauge!(
        "flowmesh_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "service" => service,
    )
    .set(1.0);
}

/// Routes answered often and for machines (probes and scrapes): not traced, so that they do not
/// bury the requests' traces, and logged at `debug`, not `info`.
fn is_quiet(route: &str) -> bool {
    matches!(route, "/livez" | "/readyz" | "/metrics")
}

/// The route a request is labelled with: the route it matched (`/snapshot/{executor}/{shard}`,
/// never the path with its values), except that an executor's `/{endpoint}` is labelled with
/// the endpoint called (`/index`, `/search`, ...) so that they can be told apart; any other
/// name (one passed through unchanged) stays `/{endpoint}`. `unmatched` for a path no route
/// matches.
fn route_of(matched: Option<&MatchedPath>, path: &str) -> String {
    match matched.map(MatchedPath::as_str) {
        None => "unmatched".to_owned(),
        Some("/{endpoint}") => path
            .strip_prefix('/')
            .and_then(|name| name.parse::<Endpoint>().ok())
            .map_or("/{endpoint}", Endpoint::path)
            .to_owned(),
        Some(route) => route.to_owned(),
    }
}

/// The request id a handler found in the request's envelope, left in the response's
/// extensions for the access log (the gateway's, which generates one when the client sent
/// none). Without it the log takes the `x-request-id` header.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A request id worth logging as it is: printable ASCII, no longer than the limits accept.
fn printable_id(id: &str) -> Option<&str> {
    (!id.is_empty()
        && id.len() <= crate::limits::MAX_REQUEST_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(id)
}

/// Marks a request already tracked by an outer [`track_requests`].
#[derive(Clone, Copy)]
struct Tracked;

/// Wraps `router` in [`track_requests`] for `service`. Layered outside a layer that answers on
/// its own (the gateway's API keys, the executors' mesh token), it counts and logs those
/// answers too (401s); a request is tracked once, by the outermost layer.
pub fn tracked(service: &'static str, router: Router) -> Router {
    router.layer(axum::middleware::from_fn(move |req, next| {
        track_requests(service, req, next)
    }))
}

/// Middleware that counts requests, times them and tracks those in flight, per service and
/// route, and writes the access log line of each; with traces on, it also opens the request's
/// server span and makes it current while the handler runs. A request already tracked by an
/// outer layer passes through.
///
/// The access line (target [`ACCESS_TARGET`], level `info`; `debug` for `/livez`, `/readyz`
/// and `/metrics`) has `service`, `method`, `route`, `status`, `duration_ms`, `request_id`,
/// `request_bytes` (the request's `Content-Length`), `response_bytes` (when the body's size is
/// known), `client` (the peer), and `path` only when no route matched. Never a header's value
/// besides the request id, nor a query string, nor a body.
pub async fn track_requests(service: &'static str, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<Tracked>().is_some() {
        return next.run(req).await;
    }
    req.extensions_mut().insert(Tracked);
    let route = route_of(req.extensions().get::<MatchedPath>(), req.uri().path());
    let method = req.method().clone();
    let header_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(printable_id)
        .map(str::to_owned);
    let request_bytes = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let client = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    // The path is logged only when no route matched (what was asked for), cut short.
    let unmatched_path = (route == "unmatched").then(|| {
        let path = req.uri().path();
        let mut end = path.len().min(200);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path[..end].to_owned()
    });
    let quiet = is_quiet(&route);
    let start = Instant::now();
    let in_flight = metrics::gauge!("flowmesh_http_requests_in_flight", "service" => service);
    in_flight.increment(1.0);
    let response = if crate::trace::enabled() && !quiet {
        let span = crate::trace::server_span(service, method.as_str(), &route, req.headers());
        let response = next.run(req).with_context(span.context()).await;
        span.set_http_status(response.status().as_u16(), false);
        response
    } else {
        next.run(req).await
    };
    in_flight.decrement(1.0);
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    let request_id = response
        .extensions()
        .get::<RequestId>()
        .and_then(|id| printable_id(&id.0))
        .map(str::to_owned)
        .or(header_id);
    let response_bytes = response.body().size_hint().exact();
    let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    macro_rules! access {
        ($level:expr) => {
            tracing::event!(
                target: "flowmesh::access",
                $level,
                service,
                method = %method,
                route = %route,
                status,
                duration_ms,
                request_id = request_id.as_deref().unwrap_or("-"),
                request_bytes,
                response_bytes,
                client = client.map(tracing::field::display),
                path = unmatched_path.as_deref(),
                "access"
            )
        };
    }
    if quiet {
        access!(tracing::Level::DEBUG);
    } else {
        access!(tracing::Level::INFO);
    }
    let labels = [
        ("service", service.to_owned()),
        ("path", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("flowmesh_http_requests_total", &labels).increment(1);
    metrics::histogram!("flowmesh_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    response
}

/// Every metric flowmesh records, with its type and `# HELP` text (also the table in
/// docs/operations.md). Called once the recorder is installed.
fn describe_metrics() {
    use metrics::describe_histogram as histogram;
    use metrics::{describe_counter as counter, describe_gauge as gauge};
    counter!(
        "flowmesh_http_requests_total",
        "HTTP requests answered, by service, route (path) and status"
    );
    histogram!(
        "flowmesh_http_request_duration_seconds",
        "Time to answer an HTTP request, body encoding included, by service, route and status"
    );
    gauge!(
        "flowmesh_http_requests_in_flight",
        "HTTP requests being answered now"
    );
    gauge!(
        "flowmesh_build_info",
        "Always 1; the labels say the flowmesh version and the service"
    );
    histogram!(
        "flowmesh_executor_duration_seconds",
        "Time one executor of the Flow took on one batch of one request (every shard, retries included)"
    );
    counter!(
        "flowmesh_executor_retries_total",
        "Executor calls retried on another replica"
    );
    counter!(
        "flowmesh_auth_failures_total",
        "Calls refused for their credential (API key or mesh token), by reason"
    );
    counter!(
        "flowmesh_requests_shed_total",
        "Requests answered 429 at once because --max-concurrent-requests were in flight"
    );
    counter!(
        "flowmesh_executor_restarts_total",
        "Executor processes restarted by flowmesh up after a crash"
    );
    gauge!(
        "flowmesh_executor_processes_failed",
        "Executor processes that crashed --restart-limit times and stay down"
    );
    counter!(
        "flowmesh_encoder_jobs_cancelled_total",
        "Encoder jobs dropped because their caller left or their deadline passed"
    );
    gauge!(
        "flowmesh_replica_up",
        "1 while the replica passes its health checks, 0 while it is out of the pool"
    );
    histogram!(
        "flowmesh_encoder_batch_size",
        "Inputs per model call of the encoder (dynamic batching gathers concurrent requests; by length, a batch runs as several calls)"
    );
    histogram!(
        "flowmesh_encoder_padded_token_share",
        "Share of a text model call's tokens that is padding (every text is padded to the call's longest)"
    );
    histogram!(
        "flowmesh_encoder_inference_seconds",
        "Time the encoder's model took per batch"
    );
    gauge!(
        "flowmesh_encoder_queue_depth",
        "Inputs waiting for an encoder batch"
    );
    gauge!(
        "flowmesh_index_vectors",
        "Vectors stored in the indexer shard (one per leaf chunk)"
    );
    gauge!(
        "flowmesh_index_documents",
        "Documents the indexer shard's vectors belong to"
    );
    gauge!(
        "flowmesh_index_built_vectors",
        "Vectors in the approximate structure (annoy, faiss) built last"
    );
    gauge!(
        "flowmesh_index_fresh_vectors",
        "Vectors written since the last build, searched exactly until the next one"
    );
    counter!(
        "flowmesh_indexer_search_errors_total",
        "Searches of the built approximate structure that failed"
    );
    gauge!(
        "flowmesh_store_documents",
        "Documents in the ranker's document store (embedded and memory stores)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_paths_quiet_routes_and_request_ids() {
        // Matched routes are checked through a router, in tests/operations.rs.
        assert_eq!(route_of(None, "/api/v1/users/42"), "unmatched");
        assert!(is_quiet("/readyz") && !is_quiet("/search"));
        assert_eq!(printable_id("abc-1"), Some("abc-1"));
        assert_eq!(printable_id("a b"), None);
        assert_eq!(printable_id(""), None);
    }
}
