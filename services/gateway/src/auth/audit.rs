//! The audit log: one line per write (`/index`, `/update`, `/delete`, `/post` with a write
//! endpoint), with tracing target `flowmesh::audit` at level info, once its answer is known;
//! refused writes (401, 403) included.
//!
//! Fields: `request_id`, `key` (the key's name, never the key: see
//! [`Caller`]), `client` (the peer address), `endpoint`, `docs` (how many documents the request
//! carried), `status` (the HTTP status) and `outcome` (`ok`, or the error's kind).
//!
//! The handler that runs a write knows its request id, endpoint and documents; it leaves them in
//! the response's extensions as a [`WriteAudit`] for the middleware, which knows the caller and
//! the client and writes the line. A write refused before its handler ran (no or a wrong key,
//! a read-only key, a body that did not parse) is logged from what the request says.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::response::Response;

use flowmesh_shared::{ApiError, Endpoint};

use super::Caller;

/// What a handler knows of the write it ran, for the audit line.
#[derive(Debug, Clone)]
pub struct WriteAudit {
    /// The request id (`header.request_id`, generated when the client sent none).
    pub request_id: String,
    /// The endpoint that ran.
    pub endpoint: Endpoint,
    /// How many documents the request carried.
    pub docs: usize,
    /// The error's kind when the request failed.
    pub error_kind: Option<String>,
}

impl WriteAudit {
    /// Whether this request writes (and is audited): `/index`, `/update`, `/delete`.
    pub fn is_write(endpoint: Endpoint) -> bool {
        !matches!(endpoint, Endpoint::Search)
    }

    /// The record of `endpoint`'s request `request_id` with `docs` documents, answered by
    /// `result`'s error kind if any.
    pub fn new<T>(
        request_id: String,
        endpoint: Endpoint,
        docs: usize,
        result: &Result<T, ApiError>,
    ) -> Self {
        Self {
            request_id,
            endpoint,
            docs,
            error_kind: result.as_ref().err().map(|e| e.kind().to_owned()),
        }
    }
}

/// Logs the line of a request to a write route (`/index`, `/update`, `/delete`, `/post`) that
/// went through to the router; `/post` only when its handler says it ran a write.
pub(super) fn answered(
    caller: &Caller,
    client: Option<SocketAddr>,
    path: &str,
    response: &Response,
) {
    let status = response.status().as_u16();
    match response.extensions().get::<WriteAudit>() {
        Some(audit) if WriteAudit::is_write(audit.endpoint) => {
            let outcome = outcome(status, audit.error_kind.as_deref());
            line(
                &audit.request_id,
                caller.name(),
                client,
                audit.endpoint.path(),
                audit.docs,
                status,
                outcome,
            );
        }
        // A search through /post: not a write.
        Some(_) => {}
        // Refused before the handler ran (a body that does not parse, over a limit, shed):
        // what the route was is all there is to say.
        None => line(
            "-",
            caller.name(),
            client,
            path,
            0,
            status,
            outcome(status, None),
        ),
    }
}

/// Logs a write refused by the middleware (no or a wrong key, a read-only key).
pub(super) fn refused(
    req: &Request,
    path: &str,
    key: &str,
    client: Option<SocketAddr>,
    response: &Response,
) {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_printable_id(id))
        .unwrap_or("-");
    let status = response.status().as_u16();
    line(
        request_id,
        key,
        client,
        path,
        0,
        status,
        outcome(status, None),
    );
}

/// Logs the line of a gRPC data request that writes, or of a gRPC data call refused for its
/// credential (`endpoint` is then the gRPC method: the endpoint is not known yet); `status` is
/// the HTTP status the same answer has over HTTP, `kind` the error's kind when it failed.
pub(crate) fn grpc_write(
    request_id: &str,
    key: &str,
    client: Option<SocketAddr>,
    endpoint: &str,
    docs: usize,
    status: u16,
    kind: Option<&str>,
) {
    line(
        request_id,
        key,
        client,
        endpoint,
        docs,
        status,
        outcome(status, kind),
    );
}

/// A request id worth logging as it is: what shared's limits accept in `header.request_id`.
pub fn is_printable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= flowmesh_shared::limits::MAX_REQUEST_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_graphic())
}

fn outcome(status: u16, kind: Option<&str>) -> &str {
    if let Some(kind) = kind {
        return kind;
    }
    match status {
        200..=299 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "overloaded",
        _ => "error",
    }
}

#[allow(clippy::too_many_arguments)]
fn line(
    request_id: &str,
    key: &str,
    client: Option<SocketAddr>,
    endpoint: &str,
    docs: usize,
    status: u16,
    outcome: &str,
) {
    let client = client.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
    tracing::info!(
        target: "flowmesh::audit",
        request_id,
        key,
        client,
        endpoint,
        docs,
        status,
        outcome,
        "audit: write"
    );
}
