//! Helpers for the services' handler tests (feature `testing`): requests sent through a router
//! with `oneshot`, answers read as JSON.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Sends `request` through `app`; the status and the JSON body.
///
/// # Panics
/// When the body is not JSON: every answer of the mesh is.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = match app.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// `POST /{endpoint}` with a JSON body.
///
/// # Panics
/// As [`send`].
pub async fn post(app: &Router, endpoint: &str, body: &Value) -> (StatusCode, Value) {
    let request = Request::post(format!("/{endpoint}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("bad request for /{endpoint}: {e}"));
    send(app, request).await
}

/// Compares a service's generated OpenAPI document with `openapi/<file>` at the repository root
/// (`manifest_dir` is the calling crate's `CARGO_MANIFEST_DIR`, two levels below the root). With
/// `UPDATE_OPENAPI` set, the committed file is rewritten first.
///
/// # Panics
/// When the committed document differs from `generated`, with the command that refreshes it.
pub fn assert_openapi_committed(manifest_dir: &str, file: &str, generated: &str, package: &str) {
    let path = std::path::Path::new(manifest_dir)
        .join("../../openapi")
        .join(file);
    let generated = format!("{generated}\n");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/{file} is out of date; regenerate it with `UPDATE_OPENAPI=1 cargo test -p {package}`"
    );
}

pub mod corpus;
mod redis;

pub use redis::RedisServer;
