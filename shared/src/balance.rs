//! Replica balancing: tower's power-of-two-choices balancer over PeakEwma load, fed by health
//! checks.
//!
//! Each [`ReplicaSet`] is the set of copies of one shard of one executor. A request goes to exactly
//! one replica, chosen by p2c over each replica's peak-EWMA latency, so a slow replica gets a small
//! share. A replica that drops a connection is marked down at once: its `poll_ready` then fails and
//! the balancer evicts it, and the request is retried on another replica. A monitor task probes
//! every replica's `/readyz`; a replica that fails leaves the pool and one that answers again is put
//! back.
//!
//! Retries wait an exponential backoff with full jitter, never outlive the call's deadline, and
//! draw on a per-shard retry budget (tower's [`TpsBudget`]): retries of an overloaded, failing or
//! stalled replica (429, 503, timeouts) are at most `retry_percent` of the shard's calls plus
//! `min_retries_per_sec`, so a struggling replica is not sent three times its load. A retry after
//! a replica died (connection refused or dropped, or marked down) is not drawn from the budget:
//! the dead replica is out of the pool, so the retry goes to another one and adds no load to it.

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use opentelemetry::KeyValue;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceExt};

use crate::api::Envelope;
use crate::client::{CallError, ExecutorClient};
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::trace;

/// One call to an executor: the endpoint path and the MessagePack envelope.
#[derive(Clone, Debug)]
pub struct Call {
    /// Path of the endpoint, with its leading slash (`/search`).
    pub endpoint: Arc<str>,
    /// The encoded envelope; cloning is a reference count.
    pub body: Bytes,
    /// Logged by the executor.
    pub request_id: Arc<str>,
    /// The trace the call belongs to (the gateway's span for the executor); each attempt opens
    /// a client span under it. Empty when traces are off.
    pub trace: opentelemetry::Context,
    /// When the request must be answered by: caps each attempt's timeout, stops retries, and
    /// goes to the executor in `x-flowmesh-deadline-ms`.
    pub deadline: Deadline,
}

/// How a [`ReplicaSet`] calls and checks its replicas.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// How long one call may take, queueing included, before it fails with a timeout.
    pub timeout: Duration,
    /// How many more replicas a failed call may be retried on.
    pub retries: u32,
    /// How often each replica's `/readyz` is probed.
    pub health_interval: Duration,
    /// How long a probe may take.
    pub probe_timeout: Duration,
    /// Retries of overload and timeouts may add at most this fraction of the shard's calls
    /// (over the last 10 s)...
    pub retry_percent: f32,
    /// ...plus this many per second, so that a quiet shard may still retry.
    pub min_retries_per_sec: u32,
    /// The first retry waits up to this long (full jitter); each next one up to twice as long.
    pub backoff_base: Duration,
    /// The longest wait before a retry.
    pub backoff_max: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 2,
            health_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(2),
            retry_percent: 0.1,
            min_retries_per_sec: 1,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
        }
    }
}

/// One replica's address and state, shared by its balancer endpoint and the health monitor.
#[derive(Debug)]
pub struct Replica {
    base: String,
    up: AtomicBool,
    calls: AtomicU64,
}

impl Replica {
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

    fn uri(&self, path: &str) -> Result<Uri, CallError> {
        format!("{}{}", self.base, path)
            .parse()
            .map_err(|e| CallError::Transport(format!("bad address {}{path}: {e}", self.base)))
    }
}

/// Which executor shard a [`ReplicaSet`] serves, for spans and logs.
#[derive(Debug)]
struct ShardId {
    executor: Arc<str>,
    shard: usize,
}

/// One attempt of a [`Call`]: the balancer's request type.
#[derive(Clone, Debug)]
struct Attempt {
    call: Call,
    /// 0 for the first try, then 1, 2, ... for retries on other replicas.
    retry: u32,
    /// The replicas this call was sent to, for its error message.
    tried: Tried,
}

/// The addresses of the replicas one call was sent to.
type Tried = Arc<Mutex<Vec<String>>>;

/// The balancer's endpoint for one replica.
#[derive(Clone)]
struct Endpoint {
    replica: Arc<Replica>,
    shard: Arc<ShardId>,
    client: ExecutorClient,
    down_tx: Arc<Notify>,
}

impl Service<Attempt> for Endpoint {
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
        Box::pin(async move {
            let Attempt { call, retry, tried } = attempt;
            this.replica.calls.fetch_add(1, Ordering::Relaxed);
            {
                let mut tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
                if !tried.contains(&this.replica.base) {
                    tried.push(this.replica.base.clone());
                }
            }
            let span = if trace::enabled() {
                trace::client_span(
                    &call.trace,
                    &call.endpoint,
                    &this.replica.base,
                    vec![
                        KeyValue::new("flowmesh.executor", this.shard.executor.to_string()),
                        KeyValue::new("flowmesh.shard", this.shard.shard as i64),
                        KeyValue::new("flowmesh.retry", i64::from(retry)),
                        KeyValue::new("flowmesh.request_id", call.request_id.to_string()),
                    ],
                )
            } else {
                trace::SpanGuard::default()
            };
            let uri = this.replica.uri(&call.endpoint)?;
            let result = this
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
                tracing::warn!(replica = %this.replica.base, error = %e, "replica marked down");
                this.replica.up.store(false, Ordering::Release);
                this.down_tx.notify_one();
            }
            result
        })
    }
}

type Discovered = Result<Change<usize, PeakEwma<Endpoint>>, Infallible>;
// The balanced future's error is the concrete `CallError`, not a boxed error: a
// `Box<dyn Error>` there makes rustc unable to prove callers' futures `Send`.
type BalancedFuture = Pin<Box<dyn Future<Output = Result<Envelope, CallError>> + Send>>;

fn into_call_error(e: BoxError) -> CallError {
    match e.downcast::<CallError>() {
        Ok(e) => *e,
        Err(other) => CallError::Transport(other.to_string()),
    }
}

/// The replicas of one shard of one executor behind a p2c balancer.
#[derive(Clone)]
pub struct ReplicaSet {
    executor: Arc<str>,
    shard: usize,
    replicas: Arc<[Arc<Replica>]>,
    service: Buffer<Attempt, BalancedFuture>,
    config: BalanceConfig,
    budget: Arc<TpsBudget>,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("executor", &self.executor)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl ReplicaSet {
    /// Balances over `bases` (`http://host:port`), the replicas of shard `shard` of `executor`,
    /// and starts their health monitor, which ends when the last clone of this set is dropped.
    /// Must be called inside a Tokio runtime.
    pub fn new(
        executor: &str,
        shard: usize,
        bases: &[String],
        client: ExecutorClient,
        config: BalanceConfig,
    ) -> Self {
        // The monitor sets gauges at once: the recorder must exist before them, or they are lost.
        let _ = crate::telemetry::metrics_handle();
        let (changes_tx, changes_rx) = mpsc::unbounded_channel::<Discovered>();
        let down = Arc::new(Notify::new());
        let replicas: Arc<[Arc<Replica>]> = bases
            .iter()
            .map(|b| {
                Arc::new(Replica {
                    base: b.trim_end_matches('/').to_owned(),
                    up: AtomicBool::new(true),
                    calls: AtomicU64::new(0),
                })
            })
            .collect();
        let shard_id = Arc::new(ShardId {
            executor: executor.into(),
            shard,
        });
        let endpoint = {
            let shard = shard_id.clone();
            let client = client.clone();
            let down = down.clone();
            move |replica: &Arc<Replica>| {
                PeakEwma::new(
                    Endpoint {
                        replica: replica.clone(),
                        shard: shard.clone(),
                        client: client.clone(),
                        down_tx: down.clone(),
                    },
                    Duration::from_millis(1),
                    Duration::from_secs(2).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            }
        };
        for (i, r) in replicas.iter().enumerate() {
            // The receiver is alive: it is owned right here.
            let _ = changes_tx.send(Ok(Change::Insert(i, endpoint(r))));
        }
        let discover = Box::pin(UnboundedReceiverStream::new(changes_rx));
        let balance = Balance::new(discover)
            .map_err(into_call_error)
            .map_future(|f| Box::pin(f) as BalancedFuture);
        let service = Buffer::new(balance, 1024);
        let monitor = Monitor {
            shard: shard_id,
            replicas: replicas.clone(),
            client,
            changes_tx,
            down,
            config: config.clone(),
        };
        tokio::spawn(monitor.run(endpoint));
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            config.min_retries_per_sec,
            config.retry_percent,
        ));
        Self {
            executor: executor.into(),
            shard,
            replicas,
            service,
            config,
            budget,
        }
    }

    /// The replicas, for status pages and tests.
    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// Whether at least one replica is in the pool.
    pub fn any_up(&self) -> bool {
        self.replicas.iter().any(|r| r.is_up())
    }

    /// Sends `call` to one replica, retrying on another when the replica dies, is down, is
    /// overloaded or does not answer in time, as long as the retry budget and the call's deadline
    /// allow. Fails fast when no replica is up. Errors name the executor, the shard and the
    /// replicas that failed.
    pub async fn call(&self, call: Call) -> Result<Envelope, ApiError> {
        let deadline = call.deadline;
        let tried: Tried = Arc::default();
        self.budget.deposit();
        let mut attempt = 0;
        loop {
            if deadline.is_expired() {
                return Err(self.deadline_error(&tried));
            }
            if !self.any_up() {
                return Err(ApiError::Unavailable {
                    executor: self.label(&[]),
                    message: "no healthy replica".into(),
                });
            }
            let timeout = deadline.cap(self.config.timeout);
            let mut service = self.service.clone();
            let request = Attempt {
                call: call.clone(),
                retry: attempt,
                tried: tried.clone(),
            };
            let once = async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            };
            let failure = match tokio::time::timeout(timeout, once).await {
                Ok(Ok(env)) => return Ok(env),
                Ok(Err(e)) => Failure::Call(into_call_error(e)),
                Err(_) if deadline.is_expired() => return Err(self.deadline_error(&tried)),
                Err(_) => Failure::TimedOut(timeout),
            };
            let (retryable, budgeted) = match &failure {
                Failure::Call(CallError::Transport(_) | CallError::Down) => (true, false),
                Failure::Call(e) => (e.is_retryable(), true),
                Failure::TimedOut(_) => (self.replicas.len() > 1, true),
            };
            let wait = self.backoff(attempt);
            let in_time = deadline.remaining().is_none_or(|left| left > wait);
            if retryable
                && attempt < self.config.retries
                && in_time
                && (!budgeted || self.budget.withdraw())
            {
                attempt += 1;
                metrics::counter!("flowmesh_executor_retries_total", "executor" => self.executor.to_string())
                    .increment(1);
                tracing::debug!(executor = %self.executor, shard = self.shard, error = ?failure, attempt, "retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(self.to_api_error(failure, &tried));
        }
    }

    /// The wait before retry `attempt + 1`: uniformly random up to `backoff_base * 2^attempt`,
    /// at most `backoff_max` (exponential backoff with full jitter).
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1 << attempt.min(16))
            .min(self.config.backoff_max);
        // A randomly keyed hasher is a random number; no RNG dependency for one number a retry.
        let random = std::hash::RandomState::new().build_hasher().finish();
        ceiling.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// `E shard N (addresses)`, naming the replicas in `tried`, or all of them.
    fn label(&self, tried: &[String]) -> String {
        let addresses = if tried.is_empty() {
            self.replicas
                .iter()
                .map(|r| r.base.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            tried.join(", ")
        };
        format!("{} shard {} ({addresses})", self.executor, self.shard)
    }

    fn tried_label(&self, tried: &Tried) -> String {
        self.label(&tried.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn deadline_error(&self, tried: &Tried) -> ApiError {
        ApiError::DeadlineExceeded(format!(
            "executor {}: the request's deadline passed",
            self.tried_label(tried)
        ))
    }

    fn to_api_error(&self, failure: Failure, tried: &Tried) -> ApiError {
        let err = match failure {
            Failure::TimedOut(t) => {
                return ApiError::Timeout {
                    executor: self.tried_label(tried),
                    timeout_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
                }
            }
            Failure::Call(e) => e,
        };
        match err {
            CallError::Status { status, body } if (400..500).contains(&status) && status != 429 => {
                ApiError::Rejected {
                    executor: self.executor.to_string(),
                    status,
                    kind: body.kind,
                    message: body.error,
                }
            }
            CallError::Status { status: 429, body } => ApiError::Overloaded(format!(
                "executor {} is overloaded: {}",
                self.tried_label(tried),
                body.error
            )),
            CallError::Status { status: 504, body } if body.kind == "deadline_exceeded" => {
                ApiError::DeadlineExceeded(format!(
                    "executor {}: {}",
                    self.tried_label(tried),
                    body.error
                ))
            }
            other => ApiError::Unavailable {
                executor: self.tried_label(tried),
                message: other.to_string(),
            },
        }
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    Call(CallError),
    TimedOut(Duration),
}

struct Monitor {
    shard: Arc<ShardId>,
    replicas: Arc<[Arc<Replica>]>,
    client: ExecutorClient,
    changes_tx: mpsc::UnboundedSender<Discovered>,
    down: Arc<Notify>,
    config: BalanceConfig,
}

impl Monitor {
    async fn run(self, endpoint: impl Fn(&Arc<Replica>) -> PeakEwma<Endpoint>) {
        let mut in_pool = vec![true; self.replicas.len()];
        // Replicas start in the pool; say so before the first probes answer.
        for replica in self.replicas.iter() {
            self.report(replica, true);
        }
        loop {
            let probes = self.replicas.iter().map(|r| self.probe(r));
            let healthy = futures::future::join_all(probes).await;
            for (i, (replica, ok)) in self.replicas.iter().zip(healthy).enumerate() {
                self.report(replica, ok);
                if !ok && in_pool[i] {
                    tracing::warn!(replica = %replica.base, "replica failed its health check");
                    replica.up.store(false, Ordering::Release);
                }
                if ok && !in_pool[i] {
                    tracing::info!(replica = %replica.base, "replica is healthy again");
                    replica.up.store(true, Ordering::Release);
                    in_pool[i] = true;
                    if self
                        .changes_tx
                        .send(Ok(Change::Insert(i, endpoint(replica))))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            self.evict_down(&mut in_pool);
            if self.changes_tx.is_closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.health_interval) => {}
                () = self.down.notified() => self.evict_down(&mut in_pool),
            }
        }
    }

    /// Sets `flowmesh_replica_up` for `replica`.
    fn report(&self, replica: &Replica, up: bool) {
        metrics::gauge!(
            "flowmesh_replica_up",
            "executor" => self.shard.executor.to_string(),
            "shard" => self.shard.shard.to_string(),
            "replica" => replica.base.clone(),
        )
        .set(if up { 1.0 } else { 0.0 });
    }

    /// Removes replicas marked down from the balancer, so that they are re-inserted fresh.
    fn evict_down(&self, in_pool: &mut [bool]) {
        for (i, replica) in self.replicas.iter().enumerate() {
            if in_pool[i] && !replica.is_up() {
                in_pool[i] = false;
                let _ = self.changes_tx.send(Ok(Change::Remove(i)));
            }
        }
    }

    async fn probe(&self, replica: &Replica) -> bool {
        let Ok(uri) = replica.uri("/readyz") else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.config.probe_timeout, self.client.get_ok(uri)).await,
            Ok(Ok(()))
        )
    }
}
/// Compile-time guard: the call future must stay `Send` for every lifetime, or the gateway's
/// request futures stop compiling (tower's `Oneshot` over `Buffer` is not, hence the manual
/// `poll_ready` in [`ReplicaSet::call`]).
#[allow(dead_code)]
fn _assert_send(
    s: &ReplicaSet,
    c: Call,
) -> futures::future::BoxFuture<'_, Result<Envelope, ApiError>> {
    Box::pin(s.call(c))
}
