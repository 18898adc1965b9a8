//! Readiness that follows the document store: with Redis, a background task `PING`s it every
//! `--redis-probe-interval`, and `/readyz` answers 503 naming Redis and the failure while it is
//! down, 200 again once it answers. The embedded stores are always ready once opened.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::ApiError;

use crate::store::RedisStore;

/// Why the store is not usable now, if it is not; shared by the probe and `/readyz`.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreHealth(Arc<RwLock<Option<String>>>);

impl StoreHealth {
    /// Not ready until the first probe answers, with `reason`.
    fn down(reason: &str) -> Self {
        Self(Arc::new(RwLock::new(Some(reason.to_owned()))))
    }

    fn set(&self, problem: Option<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = problem;
    }

    fn problem(&self) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Starts the probe of `store` on the current Tokio runtime; it sets `readiness` and the
/// returned health after every `PING`, and ends once the returned health is dropped with the
/// router that holds it. Outside a runtime (no probe can run) the store counts as ready.
pub(crate) fn probe_redis(
    store: RedisStore,
    interval: Duration,
    readiness: &Readiness,
) -> StoreHealth {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime: Redis readiness is not probed");
        return StoreHealth::default();
    };
    let health = StoreHealth::down("the document store Redis has not been probed yet");
    readiness.set(false);
    let weak = Arc::downgrade(&health.0);
    let readiness = readiness.clone();
    runtime.spawn(async move {
        let mut was_up = None;
        loop {
            let problem = store
                .ping()
                .await
                .err()
                .map(|e| format!("the document store Redis is unreachable: {e}"));
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let up = problem.is_none();
            if was_up != Some(up) {
                match &problem {
                    None => tracing::info!("Redis answers: ready"),
                    Some(p) => tracing::warn!(problem = %p, "not ready"),
                }
                was_up = Some(up);
            }
            StoreHealth(shared).set(problem);
            readiness.set(up);
            tokio::time::sleep(interval).await;
        }
    });
    health
}

/// Middleware: `GET /readyz` answers 503 `not_ready` naming the store's problem while there is
/// one; every other request passes.
pub(crate) async fn readyz_names_the_store(
    health: StoreHealth,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/readyz" {
        if let Some(problem) = health.problem() {
            return ApiError::NotReady(problem).into_response();
        }
    }
    next.run(request).await
}
