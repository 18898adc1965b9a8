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
//! Retries go through tower's retry middleware (see `retry.rs`): they wait an exponential backoff with
//! full jitter, never outlive the call's deadline, and draw on a per-shard retry budget (tower's
//! [`TpsBudget`](tower::retry::budget::TpsBudget)): retries of an overloaded, failing or
//! stalled replica (429, 503, timeouts) are at most `retry_percent` of the shard's calls plus
//! `min_retries_per_sec`, so a struggling replica is not sent three times its load. A retry after
//! a replica died (connection refused or dropped, or marked down) is not drawn from the budget:
//! the dead replica is out of the pool, so the retry goes to another one and adds no load to it.

mod mirror;
mod monitor;
mod replica;
mod retry;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Retry;
use tower::{Service, ServiceExt};

pub use self::mirror::{MirrorState, MIRROR_GRACE};
use self::monitor::Monitor;
pub use self::replica::Replica;
use self::replica::{Attempt, ReplicaService, ShardId, Tried};
use self::retry::{into_call_error, Attempts, Failure, RetryPolicy, Retrying};
use crate::api::Envelope;
use crate::client::{CallError, ExecutorClient};
use crate::deadline::Deadline;
use crate::error::ApiError;

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

type Discovered = Result<Change<usize, PeakEwma<ReplicaService>>, Infallible>;
// The balanced future's error is the concrete `CallError`, not a boxed error: a
// `Box<dyn Error>` there makes rustc unable to prove callers' futures `Send`.
type BalancedFuture = Pin<Box<dyn Future<Output = Result<Envelope, CallError>> + Send>>;

/// The replicas of one shard of one executor behind a p2c balancer.
#[derive(Clone)]
pub struct ReplicaSet {
    shard: Arc<ShardId>,
    replicas: Arc<[Arc<Replica>]>,
    service: Retrying,
    /// Every call deposits in it; the retry policy withdraws a retry from it.
    budget: Arc<TpsBudget>,
    /// For mirrored copies (see `mirror.rs`): the shard's acknowledged position.
    mirror: Option<Arc<MirrorState>>,
    /// Wakes the monitor when a call takes a replica out of the pool.
    down: Arc<Notify>,
    client: ExecutorClient,
    timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("executor", &self.shard.executor)
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
        Self::build(executor, shard, bases, client, config, None)
    }

    /// [`new`](Self::new) for the mirrored copies of a shard that keeps data: writes go to
    /// every copy ([`write_mirrored`](Self::write_mirrored)), reads only to copies that hold
    /// every acknowledged write.
    pub fn mirrored(
        executor: &str,
        shard: usize,
        bases: &[String],
        client: ExecutorClient,
        config: BalanceConfig,
    ) -> Self {
        let mirror = Some(Arc::new(MirrorState::default()));
        Self::build(executor, shard, bases, client, config, mirror)
    }

    fn build(
        executor: &str,
        shard: usize,
        bases: &[String],
        client: ExecutorClient,
        config: BalanceConfig,
        mirror: Option<Arc<MirrorState>>,
    ) -> Self {
        // The monitor sets gauges at once: the recorder must exist before them, or they are lost.
        let _ = crate::telemetry::metrics_handle();
        let (changes_tx, changes_rx) = mpsc::unbounded_channel::<Discovered>();
        let down = Arc::new(Notify::new());
        let replicas: Arc<[Arc<Replica>]> =
            bases.iter().map(|b| Arc::new(Replica::new(b))).collect();
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
                    ReplicaService {
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
        let attempts = Attempts {
            balanced: Buffer::new(balance, 1024),
            replicas: replicas.clone(),
            timeout: config.timeout,
        };
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            config.min_retries_per_sec,
            config.retry_percent,
        ));
        let policy = RetryPolicy::new(shard_id.clone(), replicas.len(), budget.clone(), &config);
        let timeout = config.timeout;
        let retries = config.retries;
        let monitor = Monitor {
            shard: shard_id.clone(),
            replicas: replicas.clone(),
            client: client.clone(),
            changes_tx,
            down: down.clone(),
            config,
            mirror: mirror.clone(),
        };
        tokio::spawn(monitor.run(endpoint));
        Self {
            shard: shard_id,
            replicas,
            service: Retry::new(policy, attempts),
            budget,
            mirror,
            down,
            client,
            timeout,
            retries,
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
        if self.mirror.is_some() && !self.any_up() {
            // No copy is known to hold every acknowledged write: the most advanced answers.
            return self.read_most_advanced(call).await;
        }
        let tried: Tried = Arc::default();
        self.budget.deposit();
        let mut service = self.service.clone();
        // Only mirrored sets may need the call again (a reference count on the body).
        let call_again = if self.mirror.is_some() {
            Some(call.clone())
        } else {
            None
        };
        let attempt = Attempt {
            call,
            retry: 0,
            tried: tried.clone(),
        };
        // `poll_ready` by hand, not `oneshot`: see `_assert_send`.
        let result = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
            Ok(()) => service.call(attempt).await,
            Err(failure) => Err(failure),
        };
        let failure = match result {
            Ok(envelope) => return Ok(envelope),
            Err(failure) => failure,
        };
        // The copies that held every acknowledged write all failed during this call: the most
        // advanced of the others answers rather than the read failing.
        if let Some(call) = call_again {
            let died = matches!(
                failure,
                Failure::NoneUp | Failure::Call(CallError::Transport(_) | CallError::Down)
            );
            if died && !self.any_up() {
                return self.read_most_advanced(call).await;
            }
        }
        Err(self.to_api_error(failure, &tried))
    }

    /// `E shard N (addresses)`, naming the replicas in `tried`, or all of them.
    fn label(&self, tried: &[String]) -> String {
        let addresses = if tried.is_empty() {
            self.replicas
                .iter()
                .map(|r| r.base())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            tried.join(", ")
        };
        format!(
            "{} shard {} ({addresses})",
            self.shard.executor, self.shard.shard
        )
    }

    fn tried_label(&self, tried: &Tried) -> String {
        self.label(&tried.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn to_api_error(&self, failure: Failure, tried: &Tried) -> ApiError {
        let err = match failure {
            Failure::DeadlinePassed => {
                return ApiError::DeadlineExceeded(format!(
                    "executor {}: the request's deadline passed",
                    self.tried_label(tried)
                ))
            }
            Failure::NoneUp => {
                return ApiError::Unavailable {
                    executor: self.label(&[]),
                    message: "no healthy replica".into(),
                }
            }
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
                    executor: self.shard.executor.to_string(),
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
