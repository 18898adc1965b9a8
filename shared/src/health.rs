//! Liveness and readiness, the same on every service.
//!
//! `/livez` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only once the
//! service can do its work (model loaded, index opened, store connected, executors reachable);
//! until then it answers 503 with the mesh's error body, so balancers and the launcher wait.

use std::sync::{Arc, PoisonError, RwLock, Weak};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;

/// A condition checked on every `/readyz`: `Some(reason)` while the service cannot work.
type Check = Box<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Default)]
struct Shared {
    /// Why the service is not ready, as its start-up code or a background probe last set it.
    reason: RwLock<Option<String>>,
    /// Conditions read at each `/readyz` (a full queue, say).
    checks: RwLock<Vec<Check>>,
}

/// A service's readiness, shared between its start-up code, its background probes and its
/// `/readyz` handler: a reason it is not ready (set or cleared), and conditions checked on
/// every `/readyz`. `/readyz` answers 503 `not_ready` with the first reason there is.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Shared>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("problem", &self.problem())
            .finish_non_exhaustive()
    }
}

/// A [`Readiness`] that does not keep the service's alive: a background probe holds one and
/// ends once the service is gone.
#[derive(Clone, Debug, Default)]
pub struct WeakReadiness(Weak<Shared>);

impl WeakReadiness {
    /// The readiness, while the service still holds it.
    pub fn upgrade(&self) -> Option<Readiness> {
        self.0.upgrade().map(Readiness)
    }
}

const STARTING: &str = "service is starting";

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        let r = Self::default();
        r.set(false);
        r
    }

    /// A flag that starts ready.
    pub fn ready() -> Self {
        Self::default()
    }

    /// Ready, or not ready because the service is starting.
    pub fn set(&self, ready: bool) {
        self.set_problem((!ready).then(|| STARTING.to_owned()));
    }

    /// Not ready for `reason` (said by `/readyz`), or ready with `None`.
    pub fn set_problem(&self, reason: Option<String>) {
        *self
            .0
            .reason
            .write()
            .unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Adds a condition that `/readyz` checks each time: the service is not ready while it
    /// returns `Some(reason)`.
    pub fn add_check(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.0
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(check));
    }

    /// Why the service is not ready now, or `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let reason = self
            .0
            .reason
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        reason.or_else(|| {
            self.0
                .checks
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find_map(|check| check())
        })
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.problem().is_none()
    }

    /// A handle for a background probe that must not outlive the service.
    pub fn downgrade(&self) -> WeakReadiness {
        WeakReadiness(Arc::downgrade(&self.0))
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
    match r.problem() {
        None => Ok(Json(json!({"status": "ready"}))),
        Some(problem) => Err(ApiError::NotReady(problem)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn the_reason_comes_first_then_the_checks() {
        let r = Readiness::new();
        assert_eq!(r.problem().as_deref(), Some(STARTING));
        r.set(true);
        assert!(r.is_ready());
        let full = Arc::new(AtomicBool::new(true));
        let f = full.clone();
        r.add_check(move || {
            f.load(Ordering::Relaxed)
                .then(|| "queue is full".to_owned())
        });
        assert_eq!(r.problem().as_deref(), Some("queue is full"));
        r.set_problem(Some("Redis is down".into()));
        assert_eq!(r.problem().as_deref(), Some("Redis is down"));
        r.set_problem(None);
        full.store(false, Ordering::Relaxed);
        assert!(r.is_ready());
    }

    #[test]
    fn a_weak_handle_ends_with_the_service() {
        let r = Readiness::ready();
        let weak = r.downgrade();
        assert!(weak.upgrade().is_some());
        drop(r);
        assert!(weak.upgrade().is_none());
    }
}
