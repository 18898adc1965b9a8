//! Liveness and readiness, the same on every service.
//!
//! `/livez` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only once the
//! service can do its work (model loaded, index opened, store connected, executors reachable);
//! until then it answers 503 with the mesh's error body, so balancers and the launcher wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;

/// A readiness flag shared between a service's start-up code and its `/readyz` handler.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag that starts ready.
    pub fn ready() -> Self {
        let r = Self::new();
        r.set(true);
        r
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Reads the flag.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Routes `/livez` and `/readyz`.
pub fn health_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn livez() -> Json<Value> {
    Json(json!({"status": "live"}))
}

async fn readyz(State(r): State<Readiness>) -> Result<Json<Value>, ApiError> {
    if r.is_ready() {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::NotReady("service is starting".into()))
    }
}
