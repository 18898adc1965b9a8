//! The OpenAPI description of what every executor service serves: `POST /{endpoint}` with the
//! envelope, and health and metrics. A service merges its own paths into [`executor_api`].
//!
//! The executor endpoints are served by one generic handler ([`crate::server::executor_router`]),
//! which utoipa cannot annotate; the functions below exist only to carry their documentation.

#![allow(dead_code)]

use utoipa::OpenApi;

use crate::api::{Document, Envelope, Header, Route};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    paths(executor_endpoint, livez, readyz, metrics),
    components(schemas(Envelope, Document, Header, Route, ErrorBody))
)]
struct ExecutorApi;

/// The common part of an executor service's OpenAPI document, titled `title`.
pub fn executor_api(title: &str, description: &str) -> utoipa::openapi::OpenApi {
    let mut api = ExecutorApi::openapi();
    api.info.title = title.to_owned();
    api.info.description = Some(description.to_owned());
    api
}

/// Run the executor on the envelope's documents. Endpoints the executor does not handle return
/// the envelope unchanged. JSON or MessagePack (`application/msgpack`), by `Content-Type` and
/// `Accept`.
#[utoipa::path(post, path = "/{endpoint}",
    params(("endpoint" = String, Path, description = "index, search, update, delete, or another")),
    request_body = Envelope,
    responses(
        (status = 200, description = "The envelope after the executor", body = Envelope),
        (status = 400, description = "Malformed body or documents the executor cannot take", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Overloaded; retry later", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
fn executor_endpoint() {}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "Live", body = Object)))]
fn livez() {}

/// Readiness: 200 once the service can work (model loaded, index open, store connected).
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Not ready yet", body = ErrorBody)))]
fn readyz() {}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String)))]
fn metrics() {}
