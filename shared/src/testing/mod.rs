//! Helpers for the services' handler tests (feature `testing`): requests sent through a router
//! with `oneshot`, answers read as JSON.

use axum::body::{Body, Bytes};
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
    let (status, bytes) = send_raw(app, request).await;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// Sends `request` through `app`; the status and the body's bytes.
pub async fn send_raw(app: &Router, request: Request<Body>) -> (StatusCode, Bytes) {
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
    (status, bytes)
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

/// `POST /{endpoint}` with a JSON body, which must answer 200: the answer.
///
/// # Panics
/// On any other status, with the answer.
pub async fn post_ok(app: &Router, endpoint: &str, body: &Value) -> Value {
    let (status, out) = post(app, endpoint, body).await;
    assert_eq!(status, StatusCode::OK, "/{endpoint}: {out}");
    out
}

/// `POST /{endpoint}` with a JSON body, which must fail with `status`: the error message.
///
/// # Panics
/// On any other status, or an answer without an error message.
pub async fn post_error(app: &Router, endpoint: &str, body: &Value, status: StatusCode) -> String {
    let (got, out) = post(app, endpoint, body).await;
    assert_eq!(got, status, "/{endpoint}: {out}");
    match out["error"].as_str() {
        Some(message) => message.to_owned(),
        None => panic!("/{endpoint}: no error message in {out}"),
    }
}

pub mod corpus;
mod nats;
mod openapi;
pub mod pki;
mod redis;

pub use nats::{nats_server_binary, NatsServer};
pub use openapi::{
    assert_openapi, assert_openapi_committed, assert_routes_documented, assert_swagger_ui,
    served_example,
};
pub use redis::RedisServer;

/// Writes `content` to `path`, readable by its owner only (0600), as secret files should be.
///
/// # Panics
/// When the file cannot be written.
#[allow(clippy::unwrap_used)]
pub fn write_private(path: &std::path::Path, content: &str) {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

/// A new empty directory for a test's files, named after `name` and this process.
///
/// # Panics
/// When it cannot be made.
#[allow(clippy::unwrap_used)]
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
