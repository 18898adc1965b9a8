//! Readiness that follows the document store: with Redis, a background task `PING`s it every
//! `--redis-probe-interval`, and `/readyz` answers 503 naming Redis and the failure while it is
//! down, 200 again once it answers. The embedded stores are always ready once opened.

use std::time::Duration;

use flowmesh_shared::health::Readiness;

use crate::store::RedisStore;

/// Starts the probe of `store` on the current Tokio runtime. It sets `readiness` after every
/// `PING`: not ready, naming Redis and the failure, while it does not answer. It ends once the
/// service drops its readiness. Outside a runtime (no probe can run) the store counts as ready.
pub(crate) fn probe_redis(store: RedisStore, interval: Duration, readiness: &Readiness) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime: Redis readiness is not probed");
        return;
    };
    readiness.set_problem(Some(
        "the document store Redis has not been probed yet".to_owned(),
    ));
    let weak = readiness.downgrade();
    runtime.spawn(async move {
        let mut was_up = None;
        loop {
            let problem = store
                .ping()
                .await
                .err()
                .map(|e| format!("the document store Redis is unreachable: {e}"));
            let Some(readiness) = weak.upgrade() else {
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
            readiness.set_problem(problem);
            drop(readiness);
            tokio::time::sleep(interval).await;
        }
    });
}
