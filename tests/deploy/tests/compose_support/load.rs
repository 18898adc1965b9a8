//! A bounded load of concurrent requests with an action in its middle: a few clients send
//! requests back to back; once `act_after` were sent, the action runs (stopping a container);
//! the load ends once `after_act` more were sent after the action finished, or at `max`
//! requests, or after `limit`, whichever comes first.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The load's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Concurrent clients.
    pub clients: usize,
    /// Most requests sent in all.
    pub max: usize,
    /// Longest time the load lasts.
    pub limit: Duration,
    /// The action runs once this many requests were sent...
    pub act_after: usize,
    /// ...and the load ends once this many more were sent after it finished.
    pub after_act: usize,
}

/// What the load saw.
#[derive(Debug)]
pub struct Report {
    /// Requests sent.
    pub sent: usize,
    /// Requests sent after the action finished.
    pub after_act: usize,
    /// How long the action took.
    pub act_took: Duration,
    /// How long the whole load took.
    pub elapsed: Duration,
    /// Why requests failed, one line each.
    pub failures: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    sent: AtomicUsize,
    after_act: AtomicUsize,
    acted: AtomicBool,
    failures: Mutex<Vec<String>>,
}

/// Runs the load: `request(n)` sends request number `n` and says why it failed, if it did.
pub async fn run<R, RF, A, AF>(plan: Plan, request: R, act: A) -> Report
where
    R: Fn(usize) -> RF + Send + Sync + 'static,
    RF: Future<Output = Result<(), String>> + Send + 'static,
    A: FnOnce() -> AF,
    AF: Future<Output = ()>,
{
    let state = Arc::new(State::default());
    let request = Arc::new(request);
    let threshold = Arc::new(Notify::new());
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.clients)
        .map(|_| {
            tokio::spawn(client(
                plan,
                state.clone(),
                request.clone(),
                threshold.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(plan.limit, threshold.notified())
        .await
        .expect("the load reaches the request that starts the action");
    let acting = Instant::now();
    act().await;
    let act_took = acting.elapsed();
    state.acted.store(true, Ordering::Release);
    for c in clients {
        c.await.expect("a load client panicked");
    }
    let failures = std::mem::take(&mut *state.failures.lock().expect("not poisoned"));
    Report {
        sent: state.sent.load(Ordering::Acquire).min(plan.max),
        after_act: state.after_act.load(Ordering::Acquire),
        act_took,
        elapsed: started.elapsed(),
        failures,
    }
}

/// One client: sends requests until the load has what it needs, its bound, or its time.
async fn client<R, RF>(plan: Plan, state: Arc<State>, request: Arc<R>, threshold: Arc<Notify>)
where
    R: Fn(usize) -> RF + Send + Sync + 'static,
    RF: Future<Output = Result<(), String>> + Send + 'static,
{
    let deadline = Instant::now() + plan.limit;
    loop {
        let acted = state.acted.load(Ordering::Acquire);
        if acted && state.after_act.load(Ordering::Acquire) >= plan.after_act {
            return;
        }
        let n = state.sent.fetch_add(1, Ordering::AcqRel);
        if n >= plan.max || Instant::now() >= deadline {
            return;
        }
        if n + 1 == plan.act_after {
            threshold.notify_one();
        }
        if let Err(e) = request(n).await {
            state
                .failures
                .lock()
                .expect("not poisoned")
                .push(format!("request #{n}: {e}"));
        }
        if acted {
            state.after_act.fetch_add(1, Ordering::AcqRel);
        }
    }
}
