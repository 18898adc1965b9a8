//! One replica: its address and state, and the tower service that sends it one attempt of a
//! call, which the balancer picks among.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::Uri;
use opentelemetry::KeyValue;
use tokio::sync::Notify;
use tower::Service;

use super::Call;
use crate::api::Envelope;
use crate::client::{CallError, ExecutorClient};
use crate::trace;

/// One replica's address and state, shared by its balancer endpoint and the health monitor.
#[derive(Debug)]
pub struct Replica {
    base: String,
    up: AtomicBool,
    calls: AtomicU64,
    /// For a mirrored copy: the highest log position it is known to have applied (from its
    /// answers' `x-flowmesh-log-seq`); 0 otherwise.
    position: AtomicU64,
}

impl Replica {
    /// A replica at `base` (`http://host:port`; a trailing slash is dropped), in the pool.
    pub(super) fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            up: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            position: AtomicU64::new(0),
        }
    }

    /// The base address, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the replica is in the pool.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How many calls were sent to this replica.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// For a mirrored copy: the highest log position it is known to have applied.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// A write answer said the copy applied `position`: known positions only go up (answers
    /// of concurrent writes arrive in any order).
    pub(super) fn advance(&self, position: u64) {
        self.position.fetch_max(position, Ordering::AcqRel);
    }

    /// A health probe said the copy applied `position`: its own word, even when lower (a copy
    /// that lost its data starts over).
    pub(super) fn set_position(&self, position: u64) {
        self.position.store(position, Ordering::Release);
    }

    /// Counts a call sent to this replica outside the balancer.
    pub(super) fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts the replica in the pool (`true`) or takes it out.
    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// The address of `path` on this replica.
    pub(super) fn uri(&self, path: &str) -> Result<Uri, CallError> {
        format!("{}{}", self.base, path)
            .parse()
            .map_err(|e| CallError::Transport(format!("bad address {}{path}: {e}", self.base)))
    }
}

/// Which executor shard a replica set serves, for spans, logs and metrics.
#[derive(Debug)]
pub(super) struct ShardId {
    pub(super) executor: Arc<str>,
    pub(super) shard: usize,
}

/// One attempt of a [`Call`]: the balancer's request type.
#[derive(Clone, Debug)]
pub(super) struct Attempt {
    pub(super) call: Call,
    /// 0 for the first try, then 1, 2, ... for retries on other replicas.
    pub(super) retry: u32,
    /// The replicas this call was sent to, for its error message.
    pub(super) tried: Tried,
}

/// The addresses of the replicas one call was sent to.
pub(super) type Tried = Arc<Mutex<Vec<String>>>;

/// The balancer's service for one replica (not called an endpoint: that word is for the Flow's
/// `/index`, `/search`, ...).
#[derive(Clone)]
pub(super) struct ReplicaService {
    pub(super) replica: Arc<Replica>,
    pub(super) shard: Arc<ShardId>,
    pub(super) client: ExecutorClient,
    /// Wakes the monitor, so that a replica marked down leaves the balancer at once.
    pub(super) down_tx: Arc<Notify>,
}

impl Service<Attempt> for ReplicaService {
    type Response = Envelope;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Envelope, CallError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // A failed readiness makes p2c evict this endpoint; the monitor re-inserts it once a
        // probe succeeds.
        if self.replica.is_up() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(CallError::Down))
        }
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(attempt).await })
    }
}

impl ReplicaService {
    async fn send(self, attempt: Attempt) -> Result<Envelope, CallError> {
        let Attempt { call, retry, tried } = attempt;
        self.replica.calls.fetch_add(1, Ordering::Relaxed);
        {
            let mut tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
            if !tried.contains(&self.replica.base) {
                tried.push(self.replica.base.clone());
            }
        }
        let span = if trace::enabled() {
            trace::client_span(
                &call.trace,
                &call.endpoint,
                &self.replica.base,
                vec![
                    KeyValue::new("flowmesh.executor", self.shard.executor.to_string()),
                    KeyValue::new("flowmesh.shard", self.shard.shard as i64),
                    KeyValue::new("flowmesh.retry", i64::from(retry)),
                    KeyValue::new("flowmesh.request_id", call.request_id.to_string()),
                ],
            )
        } else {
            trace::SpanGuard::default()
        };
        let uri = self.replica.uri(&call.endpoint)?;
        let result = self
            .client
            .post_traced(
                uri,
                call.body,
                &call.request_id,
                &span.context(),
                call.deadline,
            )
            .await;
        match &result {
            Ok(_) => span.set_http_status(200, true),
            Err(CallError::Status { status, .. }) => span.set_http_status(*status, true),
            Err(e) => span.set_error(e),
        }
        if let Err(CallError::Transport(e)) = &result {
            tracing::warn!(replica = %self.replica.base, error = %e, "replica marked down");
            self.replica.set_up(false);
            self.down_tx.notify_one();
        }
        result
    }
}
