//! Logging and Prometheus metrics, set up the same way by every service.
//!
//! Metrics go to one process-wide recorder, rendered at `/metrics` in Prometheus' text format.
//! Every HTTP request is counted and timed by [`track_requests`], labelled with the service name,
//! and, when traces are on, gets a server span (see [`crate::trace`]).

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::context::FutureExt as _;
use tracing_subscriber::EnvFilter;

/// Latency buckets in seconds, from 50 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Starts logging to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a
/// terminal (the launcher forwards its children's logs). Safe to call twice.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests that embed several services);
            // the handle still renders what this recorder sees.
            let _ = metrics::set_global_recorder(recorder);
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
    handle.render()
}

/// Routes `GET /metrics`, installing the recorder now: what is recorded before it exists is lost.
pub fn metrics_router() -> Router {
    let _ = metrics_handle();
    Router::new().route("/metrics", get(render))
}

/// Paths that are not traced: probes and scrapes arrive every few hundred milliseconds and would
/// bury the requests' traces.
fn is_traced(path: &str) -> bool {
    !matches!(path, "/livez" | "/readyz" | "/metrics")
}

/// Middleware that counts requests, times them and tracks those in flight, per service and route;
/// with traces on, it also opens the request's server span and makes it current while the
/// handler runs.
pub async fn track_requests(service: &'static str, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let in_flight = metrics::gauge!("flowmesh_http_requests_in_flight", "service" => service);
    in_flight.increment(1.0);
    let response = if crate::trace::enabled() && is_traced(&path) {
        let span = crate::trace::server_span(service, req.method().as_str(), &path, req.headers());
        let response = next.run(req).with_context(span.context()).await;
        span.set_http_status(response.status().as_u16(), false);
        response
    } else {
        next.run(req).await
    };
    in_flight.decrement(1.0);
    let status = response.status().as_u16().to_string();
    let labels = [
        ("service", service.to_owned()),
        ("path", path),
        ("status", status),
    ];
    metrics::counter!("flowmesh_http_requests_total", &labels).increment(1);
    metrics::histogram!("flowmesh_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}
