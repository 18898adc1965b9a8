//! One measurement of `flowmesh-bench indexer`: closed-loop callers sending search calls of a
//! fixed number of queries, in-process against a [`Shard`] or over HTTP against the service,
//! bounded by a duration and a query count, in slices that alternate between the two. Every answer is scored for recall against the exact
//! top-k, and must hold exactly `k` matches per query (otherwise the call is an error).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowmesh_indexer::{Entry, Shard, VectorIndex};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::codec::Format;
use flowmesh_shared::{Document, Envelope};
use serde::Serialize;
use serde_json::json;

use crate::load::{self, Done, Failure, Latencies, LoadConfig, Summary};

/// The queries of one data set, with their exact answers.
pub(crate) struct Workload {
    pub(crate) dim: usize,
    pub(crate) k: usize,
    /// Row-major, `dim` values a query.
    pub(crate) queries: Vec<f32>,
    /// The exact top-k rows of each query, best first.
    pub(crate) truth: Vec<Vec<u32>>,
}

impl Workload {
    pub(crate) fn len(&self) -> usize {
        self.truth.len()
    }

    fn query(&self, q: usize) -> &[f32] {
        &self.queries[q * self.dim..(q + 1) * self.dim]
    }

    /// The first query of call `call` with `batch` queries a call: calls cycle through every
    /// whole batch of the queries.
    fn first_of(&self, call: usize, batch: usize) -> usize {
        let calls = (self.len() / batch).max(1);
        (call % calls) * batch
    }
}

/// The id a stored row has, and back.
pub(crate) fn row_id(row: usize) -> String {
    format!("v{row}")
}

pub(crate) fn row_of(id: &str) -> Option<u32> {
    id.strip_prefix('v')?.parse().ok()
}

/// How long and how much one measurement may run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) duration: Duration,
    pub(crate) max_queries: usize,
}

/// How a measurement calls: `batch` queries a call, from `concurrency` callers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct CallShape {
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
}

/// One slice's calls: of `shape`, within `bounds`, after one untimed call when `warm_up`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calls {
    pub(crate) shape: CallShape,
    pub(crate) bounds: Bounds,
    pub(crate) warm_up: bool,
}

/// What one measurement found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Phase {
    /// `in-process` or `http`.
    pub(crate) mode: &'static str,
    #[serde(flatten)]
    pub(crate) shape: CallShape,
    /// Successful calls and the queries they held.
    pub(crate) calls: usize,
    pub(crate) queries: usize,
    pub(crate) queries_per_s: f64,
    /// Mean recall@k over the answered queries.
    pub(crate) recall: f64,
    /// Mean call latency as the caller saw it.
    pub(crate) mean_ms: f64,
    /// Over HTTP: the mean time the service spent on a call, from the request's arrival to its
    /// answer (decoding, search, encoding); the rest of `mean_ms` is transport and the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_mean_ms: Option<f64>,
    /// Its length, latency percentiles and failed calls.
    #[serde(flatten)]
    pub(crate) load: Summary,
}

/// Recall@k summed over the answers of a call's queries, from `first` on; any answer without
/// `k` matches, or with an id that is not a stored row, fails the whole call.
fn score<'a>(
    w: &Workload,
    first: usize,
    answers: impl ExactSizeIterator<Item = Vec<&'a str>>,
    batch: usize,
) -> Result<f64, String> {
    if answers.len() != batch {
        return Err(format!("{} answers for {batch} queries", answers.len()));
    }
    let mut sum = 0.0;
    for (q, ids) in (first..).zip(answers) {
        if ids.len() != w.k {
            return Err(format!("{} matches instead of {}", ids.len(), w.k));
        }
        let truth = &w.truth[q];
        let mut found = 0usize;
        for id in ids {
            let row = row_of(id).ok_or_else(|| format!("unknown id {id:?}"))?;
            found += usize::from(truth.contains(&row));
        }
        sum += found as f64 / truth.len().max(1) as f64;
    }
    Ok(sum)
}

/// One caller's counts.
#[derive(Default)]
struct Tally {
    queries: usize,
    recall_sum: f64,
    latencies: Latencies,
    errors: usize,
    error_samples: Vec<String>,
}

impl Tally {
    /// Counts a call of `batch` queries from `first` on, answered with `answers` in `latency`.
    fn answer<'a>(
        &mut self,
        w: &Workload,
        first: usize,
        answers: impl ExactSizeIterator<Item = Vec<&'a str>>,
        batch: usize,
        latency: Duration,
    ) {
        match score(w, first, answers, batch) {
            Ok(sum) => {
                self.queries += batch;
                self.recall_sum += sum;
                self.latencies.record(latency);
            }
            Err(e) => self.error(e),
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples.push(message);
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.queries += other.queries;
        self.recall_sum += other.recall_sum;
        self.latencies.add(&other.latencies);
        self.errors += other.errors;
        self.error_samples.extend(other.error_samples);
        self.error_samples.truncate(3);
        self
    }
}

/// What one slice of a measurement counted, and how long it took. The slices of in-process and
/// HTTP measurements alternate, so that both see the same share of a noisy machine.
#[derive(Default)]
pub(crate) struct Slice {
    tally: Tally,
    elapsed: Duration,
    /// Over HTTP: seconds the service spent on search requests, and how many it answered (from
    /// its request-duration histogram; the warm-up call included).
    pub(crate) server: Option<(f64, f64)>,
}

impl Slice {
    pub(crate) fn merge(self, other: Self) -> Self {
        let server = match (self.server, other.server) {
            (Some((s1, n1)), Some((s2, n2))) => Some((s1 + s2, n1 + n2)),
            (a, b) => a.or(b),
        };
        Self {
            tally: self.tally.merge(other.tally),
            elapsed: self.elapsed + other.elapsed,
            server,
        }
    }

    /// The measurement these slices make up.
    pub(crate) fn phase(self, mode: &'static str, shape: CallShape) -> Phase {
        let t = self.tally;
        debug_assert!(
            t.recall_sum <= t.queries as f64 + 1e-9,
            "recall counted for queries not counted"
        );
        let load = Summary::new(&t.latencies, self.elapsed, t.errors, t.error_samples);
        Phase {
            mode,
            shape,
            calls: usize::try_from(t.latencies.len()).unwrap_or(usize::MAX),
            queries: t.queries,
            queries_per_s: t.queries as f64 / load.seconds,
            recall: t.recall_sum / t.queries.max(1) as f64,
            mean_ms: t.latencies.mean_ms(),
            server_mean_ms: self
                .server
                .filter(|&(_, n)| n > 0.0)
                .map(|(s, n)| s / n * 1e3),
            load,
        }
    }
}

/// The calls a measurement may make: its query bound, in whole calls.
fn max_calls(bounds: Bounds, batch: usize) -> usize {
    bounds.max_queries.div_ceil(batch).max(1)
}

/// `concurrency` threads calling `shard.search` with `batch` queries a call, back to back.
pub(crate) fn in_process(shard: &Shard, w: &Workload, calls: Calls) -> Slice {
    let Calls {
        shape: CallShape { batch, concurrency },
        bounds,
        warm_up,
    } = calls;
    let search = |first: usize| {
        let entries: Vec<Entry<'_>> = (first..first + batch)
            .map(|q| Entry {
                id: "q",
                parent_id: None,
                vector: w.query(q),
            })
            .collect();
        shard.search(&entries, w.k)
    };
    if warm_up {
        // One untimed call, so that the first timed one does not pay for cold caches.
        let _ = search(0);
    }
    let next = AtomicUsize::new(0);
    let max_calls = max_calls(bounds, batch);
    let start = Instant::now();
    let deadline = start + bounds.duration;
    let tally = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut tally = Tally::default();
                    while Instant::now() < deadline {
                        let call = next.fetch_add(1, Ordering::Relaxed);
                        if call >= max_calls {
                            break;
                        }
                        let first = w.first_of(call, batch);
                        let t0 = Instant::now();
                        match search(first) {
                            Ok(hits) => {
                                let latency = t0.elapsed();
                                let ids = hits
                                    .iter()
                                    .map(|h| h.iter().map(|hit| hit.id.as_str()).collect());
                                tally.answer(w, first, ids, batch, latency);
                            }
                            Err(e) => tally.error(e.to_string()),
                        }
                    }
                    tally
                })
            })
            .collect();
        callers
            .into_iter()
            .filter_map(|c| c.join().ok())
            .fold(Tally::default(), Tally::merge)
    });
    Slice {
        tally,
        elapsed: start.elapsed(),
        server: None,
    }
}

/// The MessagePack bodies of every search call of `batch` queries, encoded once up front so
/// that the measurement times the service rather than the client's encoding.
pub(crate) fn search_bodies(w: &Workload, batch: usize) -> anyhow::Result<Vec<Bytes>> {
    let calls = (w.len() / batch).max(1);
    (0..calls)
        .map(|call| {
            let first = w.first_of(call, batch);
            let data = (first..first + batch)
                .map(|q| Document {
                    id: format!("q{q}"),
                    embedding: Some(w.query(q).to_vec()),
                    ..Document::default()
                })
                .collect();
            let mut envelope = Envelope::new(data);
            envelope.parameters.insert("top_k".into(), json!(w.k));
            Ok(Format::MsgPack.encode(&envelope)?)
        })
        .collect()
}

/// `concurrency` connections posting `bodies` (from [`search_bodies`]) to `url`, back to back,
/// on the load driver.
pub(crate) async fn over_http(
    client: &ExecutorClient,
    url: &http::Uri,
    w: &Arc<Workload>,
    bodies: &Arc<Vec<Bytes>>,
    calls: Calls,
) -> Slice {
    let batch = calls.shape.batch;
    let (max, duration) = (max_calls(calls.bounds, batch), calls.bounds.duration);
    if let Some(body) = bodies.first().filter(|_| calls.warm_up) {
        // One untimed call opens a connection and warms the service; sent here rather than as
        // the driver's warm-up, so that its answer is not scored.
        let _ = client
            .post(url.clone(), body.clone(), "bench-warm-up")
            .await;
    }
    let config = LoadConfig::new(calls.shape.concurrency, max, duration);
    let recall_sum = Arc::new(Mutex::new(0.0_f64));
    let (client, url, w, bodies, sum) = (
        client.clone(),
        url.clone(),
        Arc::clone(w),
        Arc::clone(bodies),
        Arc::clone(&recall_sum),
    );
    let m = load::run(&config, move |call| {
        let (client, url, w, bodies, sum) = (
            client.clone(),
            url.clone(),
            w.clone(),
            bodies.clone(),
            sum.clone(),
        );
        async move {
            let first = w.first_of(call, batch);
            let body = bodies
                .get(first / batch)
                .cloned()
                .ok_or_else(|| Failure::new("no_body", format!("no body for call {call}")))?;
            let answer = client
                .post(url, body, "bench")
                .await
                .map_err(|e| Failure::new("transport", e.to_string()))?;
            let ids = answer
                .data
                .iter()
                .map(|d| d.matches.iter().map(|m| m.id.as_str()).collect());
            let found = score(&w, first, ids, batch).map_err(|e| Failure::new("wrong", e))?;
            *sum.lock().unwrap_or_else(PoisonError::into_inner) += found;
            Ok(Done::documents(batch))
        }
    })
    .await;
    let recall_sum = *recall_sum.lock().unwrap_or_else(PoisonError::into_inner);
    Slice {
        tally: Tally {
            queries: m.documents,
            recall_sum,
            errors: m.error_count(),
            error_samples: m
                .errors
                .values()
                .flat_map(|e| e.samples.clone())
                .take(3)
                .collect(),
            latencies: m.latencies,
        },
        elapsed: m.elapsed,
        server: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            dim: 1,
            k: 2,
            queries: vec![0.0; 4],
            truth: vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]],
        }
    }

    #[test]
    fn answers_are_scored_and_checked() {
        let w = workload();
        let ms100 = Duration::from_millis(100);
        let mut t = Tally::default();
        t.answer(
            &w,
            2,
            [vec!["v4", "v9"], vec!["v7", "v6"]].into_iter(),
            2,
            Duration::from_millis(100),
        );
        assert_eq!(t.queries, 2);
        assert!((t.recall_sum - 1.5).abs() < 1e-12);
        t.answer(&w, 0, [vec!["v0"], vec!["v2", "v3"]].into_iter(), 2, ms100);
        t.answer(
            &w,
            0,
            [vec!["v0", "x"], vec!["v2", "v3"]].into_iter(),
            2,
            Duration::from_millis(100),
        );
        t.answer(&w, 0, [vec!["v0", "v1"]].into_iter(), 2, ms100);
        assert_eq!((t.errors, t.queries), (3, 2));
        let phase = Slice {
            tally: t,
            elapsed: Duration::from_secs(1),
            server: None,
        }
        .phase(
            "in-process",
            CallShape {
                batch: 2,
                concurrency: 1,
            },
        );
        assert!((phase.recall - 0.75).abs() < 1e-12);
        assert_eq!(phase.calls, 1);
        assert!((phase.mean_ms - 100.0).abs() < 0.1, "{}", phase.mean_ms);
        assert_eq!(phase.load.error_samples.len(), 3);
        assert_eq!(
            crate::report::keys(&phase),
            crate::report::sorted(&[
                "mode",
                "batch",
                "concurrency",
                "calls",
                "queries",
                "seconds",
                "queries_per_s",
                "recall",
                "mean_ms",
                "p50_ms",
                "p99_ms",
                "errors",
                "error_samples",
            ])
        );
    }

    #[test]
    fn calls_cycle_through_whole_batches() {
        let w = workload();
        let firsts: Vec<usize> = (0..5).map(|c| w.first_of(c, 2)).collect();
        assert_eq!(firsts, [0, 2, 0, 2, 0]);
        assert_eq!(w.first_of(7, 3), 0);
        assert_eq!(row_of(&row_id(41)), Some(41));
    }
}
