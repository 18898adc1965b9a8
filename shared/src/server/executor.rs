//! The executor protocol's side of a service: the [`Executor`] trait and the routes that serve
//! one.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use super::routes::{service_router, shed_beyond};
use crate::api::Envelope;
use crate::codec::{Negotiated, Reply};
use crate::deadline::Deadline;
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::health::Readiness;
use crate::limits::Limits;

/// An executor: something the Flow sends envelopes to.
///
/// Only the four [`Endpoint`]s reach an executor. A request to any other name (`POST /foo`) is
/// answered with its envelope unchanged before `call`, as Jina's executors let endpoints they
/// do not handle pass through, so that every endpoint can flow through every executor of a
/// Flow; an executor that has nothing to do for one of the four returns the envelope unchanged
/// too.
pub trait Executor: Send + Sync + 'static {
    /// Handles one request to `endpoint`.
    ///
    /// The request has passed [`Limits::check`]. The call future is dropped when `deadline`
    /// passes or the caller hangs up; work that runs elsewhere (a model's thread, the blocking
    /// pool) should look at `deadline` between units of work and stop once it has passed.
    fn call(
        &self,
        endpoint: Endpoint,
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
    let own = Router::new()
        .route("/{endpoint}", post(executor_call::<E>))
        .route_layer(shed_beyond(limits.max_concurrent_requests))
        .with_state(state)
        .merge(extra);
    service_router(service, own, readiness, limits)
}

async fn executor_call<E: Executor>(
    State(state): State<Arc<ExecutorState<E>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Negotiated<Envelope>,
) -> Result<Reply<Envelope>, ApiError> {
    let path = format!("/{name}");
    let deadline = Deadline::from_headers(&headers)?;
    if deadline.is_expired() {
        return Err(deadline.exceeded(&path));
    }
    state.limits.check(&request.body)?;
    let reply = request.reply;
    crate::trace::set_current_attribute(|| {
        opentelemetry::KeyValue::new("flowmesh.documents", request.body.data.len() as i64)
    });
    // Another name passes through unchanged (see [`Executor`]), after the same checks.
    let Ok(endpoint) = name.parse::<Endpoint>() else {
        return Ok(Reply(reply, request.body));
    };
    let work = state.executor.call(endpoint, request.body, deadline);
    let response = deadline.run(&path, work).await?;
    Ok(Reply(reply, response))
}
