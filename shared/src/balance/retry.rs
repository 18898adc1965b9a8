//! Retries of a call on other replicas, through tower's [`Retry`]: [`Attempts`] makes one
//! attempt (under its timeout and the call's deadline) and [`RetryPolicy`] decides whether a
//! failed attempt is tried again, drawing on the shard's retry budget, and how long to wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::buffer::Buffer;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::util::rng::{HasherRng, Rng};
use tower::{BoxError, Service};

use super::replica::{Attempt, Replica, ShardId};
use super::{BalanceConfig, BalancedFuture};
use crate::api::Envelope;
use crate::client::CallError;

/// Why one attempt, and so the call, failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The replica (or the balancer) answered with an error.
    Call(CallError),
    /// No answer within the attempt's timeout.
    TimedOut(Duration),
    /// The call's deadline passed before or during the attempt.
    DeadlinePassed,
    /// No replica was in the pool when the attempt started.
    NoneUp,
}

impl Failure {
    /// Whether a retry may follow this failure, and whether that retry is drawn from the
    /// budget. A replica that died (refused or dropped the connection, or was marked down) is
    /// out of the pool: the retry adds no load to it, so it is not budgeted. Overload, errors
    /// and timeouts are; a timeout is retried only where there is another replica to try.
    pub(super) fn retry_kind(&self, replicas: usize) -> (bool, bool) {
        match self {
            Self::Call(CallError::Transport(_) | CallError::Down) => (true, false),
            Self::Call(e) => (e.is_retryable(), true),
            Self::TimedOut(_) => (replicas > 1, true),
            Self::DeadlinePassed | Self::NoneUp => (false, false),
        }
    }
}

/// The retrying service of one replica set: tower's [`Retry`] over [`Attempts`].
pub(super) type Retrying = Retry<RetryPolicy, Attempts>;

/// The balanced replicas' error as the [`CallError`] a replica gave, where it was one.
pub(super) fn into_call_error(e: BoxError) -> CallError {
    match e.downcast::<CallError>() {
        Ok(e) => *e,
        Err(other) => CallError::Transport(other.to_string()),
    }
}

/// Makes one attempt of a call on the balanced replicas: fails fast when the deadline passed or
/// no replica is up, and bounds the attempt (waiting for a ready replica included) by the
/// configured timeout, capped by the call's deadline.
#[derive(Clone)]
pub(super) struct Attempts {
    pub(super) balanced: Buffer<Attempt, BalancedFuture>,
    pub(super) replicas: Arc<[Arc<Replica>]>,
    pub(super) timeout: Duration,
}

impl Service<Attempt> for Attempts {
    type Response = Envelope;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Envelope, Failure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        // The balancer's readiness is awaited inside the attempt, under its timeout.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let mut balanced = self.balanced.clone();
        let replicas = self.replicas.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let deadline = attempt.call.deadline;
            if deadline.is_expired() {
                return Err(Failure::DeadlinePassed);
            }
            if !replicas.iter().any(|r| r.is_up()) {
                return Err(Failure::NoneUp);
            }
            let timeout = deadline.cap(timeout);
            let once = async move {
                std::future::poll_fn(|cx| balanced.poll_ready(cx)).await?;
                balanced.call(attempt).await
            };
            match tokio::time::timeout(timeout, once).await {
                Ok(Ok(env)) => Ok(env),
                Ok(Err(e)) => Err(Failure::Call(into_call_error(e))),
                Err(_) if deadline.is_expired() => Err(Failure::DeadlinePassed),
                Err(_) => Err(Failure::TimedOut(timeout)),
            }
        })
    }
}

/// When a failed attempt is retried: while retries are left, the failure allows it, the
/// backoff ends before the call's deadline, and (for budgeted failures) the shard's
/// [`TpsBudget`] has a retry to spend.
#[derive(Clone)]
pub(super) struct RetryPolicy {
    shard: Arc<ShardId>,
    replicas: usize,
    retries: u32,
    budget: Arc<TpsBudget>,
    backoff: FullJitter,
}

impl RetryPolicy {
    /// The policy of the replica set of `shard`, with `replicas` replicas, whose retries draw
    /// on `budget` (which the replica set's calls deposit in).
    pub(super) fn new(
        shard: Arc<ShardId>,
        replicas: usize,
        budget: Arc<TpsBudget>,
        config: &BalanceConfig,
    ) -> Self {
        Self {
            shard,
            replicas,
            retries: config.retries,
            budget,
            backoff: FullJitter {
                base: config.backoff_base,
                max: config.backoff_max,
            },
        }
    }
}

impl Policy<Attempt, Envelope, Failure> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        attempt: &mut Attempt,
        result: &mut Result<Envelope, Failure>,
    ) -> Option<Self::Future> {
        let Err(failure) = result else {
            return None;
        };
        let (retryable, budgeted) = failure.retry_kind(self.replicas);
        let wait = self.backoff.wait(attempt.retry);
        let in_time = attempt
            .call
            .deadline
            .remaining()
            .is_none_or(|left| left > wait);
        if !(retryable
            && attempt.retry < self.retries
            && in_time
            && (!budgeted || self.budget.withdraw()))
        {
            return None;
        }
        attempt.retry += 1;
        metrics::counter!("flowmesh_executor_retries_total", "executor" => self.shard.executor.to_string())
            .increment(1);
        tracing::debug!(
            executor = %self.shard.executor,
            shard = self.shard.shard,
            error = ?failure,
            attempt = attempt.retry,
            "retrying"
        );
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, attempt: &Attempt) -> Option<Attempt> {
        Some(attempt.clone())
    }
}

/// Exponential backoff with full jitter: the wait before retry `n + 1` is uniformly random up to
/// `base * 2^n`, at most `max`.
///
/// Not tower's `ExponentialBackoff`: that one waits at least `base * 2^n` and adds its jitter on
/// top, where full jitter keeps the first retry quick and spreads the retries of many callers
/// over the whole window; and the policy must know the wait before it sleeps, to not retry
/// when the call's deadline would pass first.
#[derive(Clone, Copy)]
struct FullJitter {
    base: Duration,
    max: Duration,
}

impl FullJitter {
    fn wait(self, retry: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << retry.min(16)).min(self.max);
        // A fresh, randomly keyed generator each time: the policy is cloned for every call, and
        // clones of one generator would draw the same numbers.
        ceiling.mul_f64(HasherRng::new().next_f64())
    }
}
