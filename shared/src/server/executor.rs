//! The executor protocol's side of a service: the [`Executor`] trait and the routes that serve
//! one.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::routes::{service_router, shed_beyond};
use crate::api::Envelope;
use crate::codec::{Negotiated, Reply};
use crate::deadline::Deadline;
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::health::Readiness;
use crate::limits::Limits;
use crate::mirror::{Mirror, LOG_ID_HEADER, MIN_SEQ_HEADER, SEQ_HEADER};

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
    let (path, deadline) = admit(&name, &headers, &state.limits, &request.body)?;
    let reply = request.reply;
    // Another name passes through unchanged (see [`Executor`]), after the same checks.
    let Ok(endpoint) = name.parse::<Endpoint>() else {
        return Ok(Reply(reply, request.body));
    };
    let work = state.executor.call(endpoint, request.body, deadline);
    let response = deadline.run(&path, work).await?;
    Ok(Reply(reply, response))
}

/// What every executor call passes first, mirrored or not: its deadline (400 when malformed,
/// 504 when already past), then the request limits; the route's path and the deadline.
fn admit(
    name: &str,
    headers: &HeaderMap,
    limits: &Limits,
    body: &Envelope,
) -> Result<(String, Deadline), ApiError> {
    let path = format!("/{name}");
    let deadline = Deadline::from_headers(headers)?;
    if deadline.is_expired() {
        return Err(deadline.exceeded(&path));
    }
    limits.check(body)?;
    crate::trace::set_current_attribute(|| {
        opentelemetry::KeyValue::new("flowmesh.documents", body.data.len() as i64)
    });
    Ok((path, deadline))
}

/// The routes of a stateful executor (one that keeps data): those of [`executor_router`], plus
/// `GET /mirror/snapshot` (a consistent image of the store), served whether or not `mirror`
/// follows a log. When it does (a mirrored copy), writes take effect only in log order: `POST
/// /{index,update,delete}` needs `x-flowmesh-log-seq` (409 `conflict` without it), every answer
/// carries the applied position in that header, and `/readyz` answers 503 while the copy
/// catches up or, with `x-flowmesh-min-seq: S`, until it has applied S. A copy that is not
/// mirrored serves exactly the routes of [`executor_router`].
pub fn stateful_executor_router<E: Executor>(
    service: &'static str,
    executor: Arc<E>,
    readiness: Readiness,
    limits: &Limits,
    extra: Router,
    mirror: Mirror,
) -> Router {
    let extra = extra.merge(
        Router::new()
            .route("/mirror/snapshot", get(snapshot_get))
            .with_state(mirror.clone()),
    );
    if !mirror.is_mirrored() {
        return executor_router(service, executor, readiness, limits, extra);
    }
    let checked = mirror.clone();
    readiness.add_check(move || checked.not_ready(None));
    let state = Arc::new(MirroredState {
        executor,
        limits: limits.clone(),
        mirror: mirror.clone(),
    });
    let own = Router::new()
        .route("/{endpoint}", post(mirrored_call::<E>))
        .route_layer(shed_beyond(limits.max_concurrent_requests))
        .with_state(state)
        .merge(extra);
    service_router(service, own, readiness, limits).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| position_headers(mirror.clone(), req, next),
    ))
}

/// What the mirrored executor route shares.
struct MirroredState<E> {
    executor: Arc<E>,
    limits: Limits,
    mirror: Mirror,
}

/// `/readyz` with `x-flowmesh-min-seq`, and the applied position on every answer.
async fn position_headers(mirror: Mirror, req: Request, next: Next) -> Response {
    let min = req
        .headers()
        .get(MIN_SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>());
    let mut response = match min {
        Some(min) if req.uri().path() == "/readyz" => match min {
            Err(_) => ApiError::InvalidParameter {
                name: MIN_SEQ_HEADER.into(),
                message: "must be a non-negative integer".into(),
            }
            .into_response(),
            Ok(min) => match mirror.not_ready(Some(min)) {
                Some(problem) => ApiError::NotReady(problem).into_response(),
                None => next.run(req).await,
            },
        },
        _ => next.run(req).await,
    };
    response
        .headers_mut()
        .insert(SEQ_HEADER, HeaderValue::from(mirror.position()));
    response
}

/// `GET /mirror/snapshot`: the store's image, taken with writes paused.
async fn snapshot_get(State(mirror): State<Mirror>) -> Result<Response, ApiError> {
    let (position, log_id, bytes) = mirror.snapshot().await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(SEQ_HEADER, HeaderValue::from(position));
    if let Ok(id) = HeaderValue::from_str(&log_id) {
        headers.insert(LOG_ID_HEADER, id);
    }
    Ok(response)
}

async fn mirrored_call<E: Executor>(
    State(state): State<Arc<MirroredState<E>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Negotiated<Envelope>,
) -> Result<Reply<Envelope>, ApiError> {
    let (path, deadline) = admit(&name, &headers, &state.limits, &request.body)?;
    let reply = request.reply;
    let Ok(endpoint) = name.parse::<Endpoint>() else {
        return Ok(Reply(reply, request.body));
    };
    if endpoint == Endpoint::Search {
        let work = state.executor.call(endpoint, request.body, deadline);
        return Ok(Reply(reply, deadline.run(&path, work).await?));
    }
    let Some(seq) = headers.get(SEQ_HEADER) else {
        return Err(ApiError::Conflict(format!(
            "writes to a mirrored copy come through the gateway, in log order ({path} without \
             {SEQ_HEADER})"
        )));
    };
    let seq = seq
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s >= 1)
        .ok_or_else(|| ApiError::InvalidParameter {
            name: SEQ_HEADER.into(),
            message: "must be a log position (an integer, at least 1)".into(),
        })?;
    let work = state.mirror.write(seq, endpoint, request.body);
    Ok(Reply(reply, deadline.run(&path, work).await?))
}
