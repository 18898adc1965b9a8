//! Routes and layers every service shares, the gateway included: health and metrics, load
//! shedding, the JSON answers for unknown paths and wrong methods, body limits, request
//! metrics and the access log.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::health::{health_router, Readiness};
use crate::limits::Limits;
use crate::telemetry::{build_info, metrics_router, tracked};

/// A service's `own` routes with what every service serves the same way around them:
/// `/livez` and `/readyz` (from `readiness`), `/metrics` (with `flowmesh_build_info` for
/// `service`), JSON answers for unknown paths and wrong methods, the body limit of `limits`,
/// and request metrics and the access log labelled `service`
/// ([`crate::telemetry::track_requests`]). A layer added around the result that answers on its
/// own (API keys, the mesh token) should be wrapped in [`tracked`] again, so that its answers
/// are counted and logged too.
pub fn service_router(
    service: &'static str,
    own: Router,
    readiness: Readiness,
    limits: &Limits,
) -> Router {
    build_info(service);
    let router = own
        .merge(health_router(readiness))
        .merge(metrics_router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    tracked(service, router)
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
    shed_with(Arc::new(Semaphore::new(max.max(1))))
}

/// [`shed_beyond`] with the permits of `permits`, which other listeners may share (the
/// gateway's gRPC calls take theirs from the same budget as its HTTP requests).
pub fn shed_with(permits: Arc<Semaphore>) -> ShedLayer {
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
    axum::middleware::from_fn_with_state(permits, shed as ShedFn)
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
