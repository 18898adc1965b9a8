//! The one closed-loop load driver of every benchmark: `concurrency` clients, each sending its
//! next request as soon as the previous one is answered, until `max_requests` are sent or
//! `duration` has passed. Latencies go into HDR histograms (memory stays flat over hours);
//! failures are counted by kind with a few sample messages; a client task that panics is
//! counted as an error, and what it measured before is kept.

mod http;
mod latency;
mod summary;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use http::{
    bearer_client, get, http_client, parse_server_timing, post, post_ok, secure_client, HttpClient,
};
pub(crate) use latency::Latencies;
pub(crate) use summary::Summary;

/// Sample messages kept per kind of error.
const SAMPLES: usize = 3;

/// The bound of a phase limited by its count only: a week.
pub(crate) const NO_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a phase runs: it ends at whichever bound comes first.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct LoadConfig {
    /// Concurrent clients (at least one runs).
    #[serde(skip)]
    pub(crate) concurrency: usize,
    /// Most requests sent (numbered `0..max_requests`).
    pub(crate) max_requests: usize,
    /// No request starts after this much time.
    #[serde(serialize_with = "seconds", rename = "duration")]
    pub(crate) duration: Duration,
    /// Requests sent one at a time before the phase and not measured (request `0` each
    /// time): a model's first calls at a new batch size are slow.
    #[serde(skip)]
    pub(crate) warmup: usize,
    /// A request not answered in this time counts as a `timeout` error.
    #[serde(skip)]
    pub(crate) timeout: Duration,
}

/// Serializes a duration as its seconds (`f64`).
pub(crate) fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl LoadConfig {
    /// `concurrency` clients for `max_requests` requests or `duration`, no warm-up, and no
    /// request timeout shorter than the phase's bound.
    pub(crate) fn new(concurrency: usize, max_requests: usize, duration: Duration) -> Self {
        Self {
            concurrency,
            max_requests,
            duration,
            warmup: 0,
            timeout: NO_LIMIT,
        }
    }
}

/// Why a request did not succeed; `kind` is what errors are counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

/// What a successful request did: its documents, and the executors' `Server-Timing`
/// durations (name, ms).
#[derive(Debug, Clone, Default)]
pub(crate) struct Done {
    pub(crate) documents: usize,
    pub(crate) executor_ms: Vec<(String, f64)>,
}

impl Done {
    /// A request of `documents` documents.
    pub(crate) fn documents(documents: usize) -> Self {
        Self {
            documents,
            executor_ms: Vec::new(),
        }
    }
}

/// Errors of one kind.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct ErrorKind {
    pub(crate) count: usize,
    pub(crate) samples: Vec<String>,
}

/// What a phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Latencies of the successful requests.
    pub(crate) latencies: Latencies,
    /// Documents of the successful requests.
    pub(crate) documents: usize,
    pub(crate) errors: BTreeMap<String, ErrorKind>,
    pub(crate) elapsed: Duration,
    /// Per second since the start: successful requests, their documents, failed requests.
    pub(crate) series: Vec<[usize; 3]>,
    /// `Server-Timing` durations by executor.
    pub(crate) executors: BTreeMap<String, Latencies>,
    /// The first failed warm-up request, if one failed.
    pub(crate) warmup_failure: Option<Failure>,
}

impl Measured {
    /// Successful requests.
    pub(crate) fn requests(&self) -> usize {
        usize::try_from(self.latencies.len()).unwrap_or(usize::MAX)
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.values().map(|e| e.count).sum()
    }

    /// A few error messages, each with its kind.
    pub(crate) fn error_samples(&self) -> Vec<String> {
        self.errors
            .iter()
            .flat_map(|(kind, e)| e.samples.iter().map(move |m| format!("{kind}: {m}")))
            .take(5)
            .collect()
    }

    pub(crate) fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn requests_per_s(&self) -> f64 {
        self.requests() as f64 / self.seconds()
    }

    pub(crate) fn docs_per_s(&self) -> f64 {
        self.documents as f64 / self.seconds()
    }

    /// The latency `q`-quantile in milliseconds (NaN without successful requests).
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        self.latencies.quantile_ms(q)
    }

    /// Counts one outcome, answered `at` seconds after the start.
    fn record(&mut self, at: f64, outcome: Result<(Duration, Done), Failure>) {
        let second = at as usize;
        if self.series.len() <= second {
            self.series.resize(second + 1, [0; 3]);
        }
        match outcome {
            Ok((latency, done)) => {
                self.latencies.record(latency);
                self.documents += done.documents;
                self.series[second][0] += 1;
                self.series[second][1] += done.documents;
                for (name, ms) in done.executor_ms {
                    self.executors.entry(name).or_default().record_ms(ms);
                }
            }
            Err(f) => {
                self.series[second][2] += 1;
                self.fail(f);
            }
        }
    }

    fn fail(&mut self, f: Failure) {
        let kind = self.errors.entry(f.kind).or_default();
        kind.count += 1;
        if kind.samples.len() < SAMPLES {
            kind.samples.push(f.message);
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies.add(&other.latencies);
        self.documents += other.documents;
        for (k, e) in other.errors {
            let mine = self.errors.entry(k).or_default();
            mine.count += e.count;
            let room = SAMPLES.saturating_sub(mine.samples.len());
            mine.samples.extend(e.samples.into_iter().take(room));
        }
        if self.series.len() < other.series.len() {
            self.series.resize(other.series.len(), [0; 3]);
        }
        for (mine, theirs) in self.series.iter_mut().zip(other.series) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        for (k, l) in other.executors {
            self.executors.entry(k).or_default().add(&l);
        }
    }
}

/// Counters a progress display reads while a phase runs.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) requests: AtomicU64,
    pub(crate) documents: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Latencies of successful requests since the last [`Live::take_recent`].
    recent: Mutex<Latencies>,
}

impl Live {
    fn record_ok(&self, docs: usize, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.documents.fetch_add(docs as u64, Ordering::Relaxed);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency);
    }

    fn record_error(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The latencies since the last call.
    pub(crate) fn take_recent(&self) -> Latencies {
        std::mem::take(&mut *self.recent.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Sends request `i` with `send`, bounded by the config's timeout; its latency and outcome.
async fn one<F, Fut>(send: &F, i: usize, timeout: Duration) -> Result<(Duration, Done), Failure>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Done, Failure>>,
{
    let started = Instant::now();
    match tokio::time::timeout(timeout, send(i)).await {
        Ok(Ok(done)) => Ok((started.elapsed(), done)),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::new("timeout", format!("no answer in {timeout:?}"))),
    }
}

/// Runs a phase: requests `send(0)`, `send(1)`, ... from `config.concurrency` clients.
pub(crate) async fn run<F, Fut>(config: &LoadConfig, send: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Done, Failure>> + Send,
{
    run_observed(config, &Arc::new(Live::default()), send).await
}

/// [`run`], counting every outcome in `live` as it comes too.
pub(crate) async fn run_observed<F, Fut>(config: &LoadConfig, live: &Arc<Live>, send: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Done, Failure>> + Send,
{
    let send = Arc::new(send);
    let mut warmup_failure = None;
    for _ in 0..config.warmup {
        if let Err(f) = one(send.as_ref(), 0, config.timeout).await {
            warmup_failure.get_or_insert(f);
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // A bound past what an Instant holds is no bound: a week is longer than any phase.
    let deadline = started
        .checked_add(config.duration)
        .unwrap_or(started + NO_LIMIT);
    // Each client counts into its own tally, which the driver reads at the end whether or not
    // the client finished: a panic loses nothing counted before it.
    let mut clients = Vec::with_capacity(config.concurrency.max(1));
    for _ in 0..config.concurrency.max(1) {
        let tally = Arc::new(Mutex::new(Measured::default()));
        let (send, next, live, mine) = (send.clone(), next.clone(), live.clone(), tally.clone());
        let (max, timeout) = (config.max_requests, config.timeout);
        let task = tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let outcome = one(send.as_ref(), i, timeout).await;
                match &outcome {
                    Ok((latency, done)) => live.record_ok(done.documents, *latency),
                    Err(_) => live.record_error(),
                }
                let at = started.elapsed().as_secs_f64();
                mine.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(at, outcome);
            }
        });
        clients.push((task, tally));
    }
    let mut total = Measured::default();
    for (task, tally) in clients {
        let joined = task.await;
        let mine = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
        total.merge(mine);
        if let Err(e) = joined {
            live.record_error();
            total.fail(Failure::new("client", format!("a client task failed: {e}")));
        }
    }
    total.elapsed = started.elapsed();
    total.warmup_failure = warmup_failure;
    total
}

#[cfg(test)]
mod tests;
