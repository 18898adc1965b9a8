//! One phase of the benchmark (index or query): `concurrency` closed-loop clients, each sending
//! its next request when the previous one is answered, until the phase's requests are sent or
//! its duration has passed. Every answer is validated (status, JSON, documents back, matches
//! per query); what fails is counted by kind with a few sample messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::progress::{Display, Live, Progress};
use super::target::{validate, Answered, Failure, Operation, Target};
use super::workload::Workload;
use crate::load::{post, HttpClient};

/// Sample messages kept per kind of error.
const SAMPLES: usize = 3;

/// The duration of a phase bounded by its count only: a week.
pub(crate) const NO_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The bounds of a phase: it ends at whichever comes first.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Limits {
    pub(crate) max_requests: usize,
    #[serde(serialize_with = "seconds")]
    pub(crate) duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How a phase runs, besides its limits.
#[derive(Debug, Clone)]
pub(crate) struct PhaseOptions {
    /// Concurrent clients.
    pub(crate) concurrency: usize,
    /// Longest wait for one answer.
    pub(crate) timeout: Duration,
    /// Interval of the summary lines.
    pub(crate) report_every: Duration,
    pub(crate) display: Display,
}

/// Errors of one kind.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct ErrorKind {
    pub(crate) count: usize,
    pub(crate) samples: Vec<String>,
}

/// What one phase measured.
#[derive(Debug, Default)]
pub(crate) struct PhaseResult {
    /// Latencies of the successful requests, in seconds, sorted.
    pub(crate) latencies: Vec<f64>,
    /// Documents of the successful requests.
    pub(crate) documents: usize,
    pub(crate) errors: BTreeMap<String, ErrorKind>,
    pub(crate) elapsed: Duration,
    /// Per second since the start: successful requests, their documents, failed requests.
    pub(crate) series: Vec<[usize; 3]>,
    /// Searches: the match ids of each query (by its index) from its first answer.
    pub(crate) answers: BTreeMap<usize, Vec<String>>,
}

impl PhaseResult {
    pub(crate) fn requests(&self) -> usize {
        self.latencies.len()
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.values().map(|e| e.count).sum()
    }

    /// The latency `q`-quantile in milliseconds (NaN without successful requests).
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        crate::load::quantile(&self.latencies, q) * 1e3
    }

    pub(crate) fn docs_per_s(&self) -> f64 {
        self.documents as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn requests_per_s(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The phase's figures as JSON (without the per-query answers).
    pub(crate) fn summary(&self) -> Value {
        json!({
            "seconds": self.elapsed.as_secs_f64(),
            "hours": self.elapsed.as_secs_f64() / 3600.0,
            "documents": self.documents,
            "requests": self.requests(),
            "docs_per_s": self.docs_per_s(),
            "requests_per_s": self.requests_per_s(),
            "latency_ms": {
                "p50": self.latency_ms(0.5),
                "p95": self.latency_ms(0.95),
                "p99": self.latency_ms(0.99),
                "max": self.latency_ms(1.0),
            },
            "errors": self.error_count(),
            "errors_by_kind": self.errors,
            "per_second": self.series.iter().enumerate().map(|(s, [r, d, e])| json!({
                "second": s, "requests": r, "documents": d, "errors": e,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One request's outcome, as a client records it.
struct Outcome {
    /// Seconds from the phase's start to the answer.
    at: f64,
    result: Result<(f64, usize), Failure>,
}

/// What [`Client::one`] got: the outcome, and a successful search's answers with the index
/// of its first query.
struct Sent {
    result: Result<(f64, usize), Failure>,
    answered: Option<(usize, Vec<Answered>)>,
}

/// Everything a client needs.
struct Client {
    http: HttpClient,
    target: Target,
    workload: Arc<Workload>,
    op: Operation,
    parameters: Value,
    expected_matches: usize,
    timeout: Duration,
    live: Arc<Live>,
}

impl Client {
    /// Sends request `i` and validates its answer; returns its documents' answers.
    async fn one(&self, i: usize) -> Sent {
        let (first, docs) = match self.op {
            Operation::Index => (
                i * self.workload.spec.request_size,
                self.workload.index_docs(i),
            ),
            Operation::Search => self.workload.query_docs(i),
        };
        let sent = docs.len();
        let (url, body) = self.target.request(self.op, &docs, &self.parameters);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, post(&self.http, &url, body)).await;
        let latency = started.elapsed().as_secs_f64();
        let checked = match answer {
            Err(_) => Err(Failure::new(
                "timeout",
                format!("no answer in {:?}", self.timeout),
            )),
            Ok(Err(e)) => Err(Failure::new("transport", format!("{e:#}"))),
            Ok(Ok(a)) if a.status != 200 => Err(Failure::new(
                &format!("http_{}", a.status),
                String::from_utf8_lossy(&a.body[..a.body.len().min(300)]).into_owned(),
            )),
            Ok(Ok(a)) => validate(&a.body, self.op, sent, self.expected_matches),
        };
        match checked {
            Ok(answered) => {
                self.live.record_ok(sent, latency);
                Sent {
                    result: Ok((latency, sent)),
                    answered: Some((first, answered)),
                }
            }
            Err(f) => {
                self.live.record_error();
                Sent {
                    result: Err(f),
                    answered: None,
                }
            }
        }
    }
}

/// One phase to run.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    /// Shown in progress lines: `index`, `query flat`.
    pub(crate) label: String,
    pub(crate) op: Operation,
    pub(crate) limits: Limits,
    /// Searches: the number of matches every query must have.
    pub(crate) expected_matches: usize,
}

/// Runs `phase` against `target`. The first answer of each query is kept in
/// [`PhaseResult::answers`].
pub(crate) async fn run_phase(
    http: &HttpClient,
    target: &Target,
    workload: &Arc<Workload>,
    phase: &Phase,
    opts: &PhaseOptions,
) -> PhaseResult {
    let Phase {
        ref label,
        op,
        limits,
        expected_matches,
    } = *phase;
    let parameters = match op {
        Operation::Index => json!({}),
        Operation::Search => json!({"top_k": workload.spec.top_k}),
    };
    let live = Arc::new(Live::default());
    let client = Arc::new(Client {
        http: http.clone(),
        target: target.clone(),
        workload: Arc::clone(workload),
        op,
        parameters,
        expected_matches,
        timeout: opts.timeout,
        live: Arc::clone(&live),
    });
    // Queries are answered once each for recall: the first pass over them.
    let first_pass = match op {
        Operation::Index => 0,
        Operation::Search => workload.query_batches(),
    };
    let progress = Progress::start(
        label,
        live,
        limits.max_requests as u64,
        limits.duration,
        limits.duration < NO_LIMIT,
        opts.report_every,
        opts.display,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limits.duration;
    let mut tasks = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency.max(1) {
        let (client, next) = (Arc::clone(&client), Arc::clone(&next));
        let max = limits.max_requests;
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut answers = BTreeMap::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let Sent { result, answered } = client.one(i).await;
                if let (true, Some((first, docs))) = (i < first_pass, answered) {
                    for (j, d) in docs.into_iter().enumerate() {
                        answers.insert(first + j, d.matches);
                    }
                }
                outcomes.push(Outcome {
                    at: started.elapsed().as_secs_f64(),
                    result,
                });
            }
            (outcomes, answers)
        }));
    }
    let mut result = PhaseResult::default();
    for task in tasks {
        match task.await {
            Ok((outcomes, answers)) => {
                result.answers.extend(answers);
                for o in outcomes {
                    record(&mut result, o);
                }
            }
            Err(e) => record(
                &mut result,
                Outcome {
                    at: started.elapsed().as_secs_f64(),
                    result: Err(Failure::new("client", format!("a client task failed: {e}"))),
                },
            ),
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort_by(f64::total_cmp);
    progress.finish();
    result
}

fn record(result: &mut PhaseResult, o: Outcome) {
    let second = o.at as usize;
    if result.series.len() <= second {
        result.series.resize(second + 1, [0; 3]);
    }
    match o.result {
        Ok((latency, docs)) => {
            result.latencies.push(latency);
            result.documents += docs;
            result.series[second][0] += 1;
            result.series[second][1] += docs;
        }
        Err(f) => {
            result.series[second][2] += 1;
            let kind = result.errors.entry(f.kind).or_default();
            kind.count += 1;
            if kind.samples.len() < SAMPLES {
                kind.samples.push(f.message);
            }
        }
    }
}

/// recall@k of `answers` against `truth` (both by query index): the mean over the queries both
/// answered of the share of the true match ids found; with the number of queries compared.
pub(crate) fn recall(
    answers: &BTreeMap<usize, Vec<String>>,
    truth: &BTreeMap<usize, Vec<String>>,
) -> (Option<f64>, usize) {
    let mut sum = 0.0;
    let mut compared = 0;
    for (q, expected) in truth {
        let Some(got) = answers.get(q) else { continue };
        if expected.is_empty() {
            continue;
        }
        let found = expected.iter().filter(|id| got.contains(id)).count();
        sum += found as f64 / expected.len() as f64;
        compared += 1;
    }
    ((compared > 0).then(|| sum / compared as f64), compared)
}

#[cfg(test)]
mod tests {
    use super::super::target::Protocol;
    use super::super::workload::{test_spec, Scenario};
    use super::*;

    /// A gateway stand-in that gives every query document two matches.
    async fn two_matches_server() -> String {
        let app = axum::Router::new().route(
            "/search",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                let data: Vec<Value> = body["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut d| {
                        d["matches"] = json!([{"id": "doc-1"}, {"id": "doc-2"}]);
                        d
                    })
                    .collect();
                axum::Json(json!({"data": data}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_wrong_number_of_matches_is_an_error() {
        let base = two_matches_server().await;
        let workload = Arc::new(Workload::new(test_spec(Scenario::Text)).expect("valid"));
        let opts = PhaseOptions {
            concurrency: 2,
            timeout: Duration::from_secs(10),
            report_every: Duration::from_secs(60),
            display: Display::Quiet,
        };
        let target = Target::new(&base, Protocol::Native);
        let mut phase = Phase {
            label: "query".into(),
            op: Operation::Search,
            limits: Limits {
                max_requests: 3,
                duration: Duration::from_secs(30),
            },
            expected_matches: 3,
        };
        let http = crate::load::http_client();
        let short = run_phase(&http, &target, &workload, &phase, &opts).await;
        assert_eq!(short.requests(), 0);
        assert_eq!(short.errors["wrong_matches"].count, 3);
        assert!(short.errors["wrong_matches"].samples[0].contains("2 matches instead of 3"));
        assert!(short.answers.is_empty());

        phase.expected_matches = 2;
        let right = run_phase(&http, &target, &workload, &phase, &opts).await;
        assert_eq!((right.requests(), right.error_count()), (3, 0));
        // The 5 queries, 2 a request: requests 0..3 are the first pass over all of them.
        assert_eq!(right.answers.len(), 5);
        assert_eq!(right.documents, 5);
    }

    #[test]
    fn recall_is_the_mean_share_of_true_ids_found() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let truth = BTreeMap::from([
            (0, ids(&["a", "b"])),
            (1, ids(&["c", "d"])),
            (2, ids(&["e"])),
        ]);
        let got = BTreeMap::from([(0, ids(&["b", "a"])), (1, ids(&["c", "x"]))]);
        let (r, n) = recall(&got, &truth);
        assert_eq!(n, 2);
        assert!((r.expect("compared") - 0.75).abs() < 1e-12);
        assert_eq!(recall(&BTreeMap::new(), &truth), (None, 0));
        assert_eq!(recall(&truth, &truth).0, Some(1.0));
    }

    #[test]
    fn outcomes_land_in_their_second() {
        let mut r = PhaseResult::default();
        record(
            &mut r,
            Outcome {
                at: 0.5,
                result: Ok((0.01, 3)),
            },
        );
        record(
            &mut r,
            Outcome {
                at: 2.2,
                result: Err(Failure::new("http_503", "busy")),
            },
        );
        record(
            &mut r,
            Outcome {
                at: 2.9,
                result: Ok((0.02, 2)),
            },
        );
        assert_eq!(r.series, vec![[1, 3, 0], [0, 0, 0], [1, 2, 1]]);
        assert_eq!(r.documents, 5);
        assert_eq!(r.errors["http_503"].count, 1);
        assert_eq!(r.error_count(), 1);
    }
}
