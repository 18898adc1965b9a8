//! One phase of the benchmark (index or query) on the load driver: every answer is validated
//! (status, JSON, documents back, matches per query); what fails is counted by kind with a few
//! sample messages, and the first answer of each query is kept for recall.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::progress::{Display, Progress};
use super::target::{validate, Answered, Operation, Target};
use super::workload::Workload;
use crate::load::{
    self, post_ok, Done, ErrorKind, Failure, HttpClient, Live, LoadConfig, Measured,
};

/// How a phase is shown, besides its load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhaseOptions {
    /// Interval of the summary lines.
    pub(crate) report_every: Duration,
    pub(crate) display: Display,
}

/// What one phase measured.
#[derive(Debug, Default)]
pub(crate) struct PhaseResult {
    pub(crate) measured: Measured,
    /// Searches: the match ids of each query (by its index) from its first answer.
    pub(crate) answers: BTreeMap<usize, Vec<String>>,
}

/// One second of a phase.
#[derive(Debug, Serialize)]
struct Second {
    second: usize,
    requests: usize,
    documents: usize,
    errors: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
struct LatencyMs {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

/// The figures of a phase, as reported (without the per-query answers).
#[derive(Debug, Serialize)]
pub(crate) struct PhaseSummary {
    seconds: f64,
    hours: f64,
    documents: usize,
    requests: usize,
    docs_per_s: f64,
    requests_per_s: f64,
    latency_ms: LatencyMs,
    errors: usize,
    errors_by_kind: BTreeMap<String, ErrorKind>,
    per_second: Vec<Second>,
}

impl PhaseResult {
    /// The phase's figures.
    pub(crate) fn summary(&self) -> PhaseSummary {
        let m = &self.measured;
        PhaseSummary {
            seconds: m.elapsed.as_secs_f64(),
            hours: m.elapsed.as_secs_f64() / 3600.0,
            documents: m.documents,
            requests: m.requests(),
            docs_per_s: m.docs_per_s(),
            requests_per_s: m.requests_per_s(),
            latency_ms: LatencyMs {
                p50: m.latency_ms(0.5),
                p95: m.latency_ms(0.95),
                p99: m.latency_ms(0.99),
                max: m.latency_ms(1.0),
            },
            errors: m.error_count(),
            errors_by_kind: m.errors.clone(),
            per_second: m
                .series
                .iter()
                .enumerate()
                .map(|(second, [requests, documents, errors])| Second {
                    second,
                    requests: *requests,
                    documents: *documents,
                    errors: *errors,
                })
                .collect(),
        }
    }
}

/// Everything a client needs.
struct Client {
    http: HttpClient,
    target: Target,
    workload: Arc<Workload>,
    phase: Phase,
    parameters: Value,
}

impl Client {
    /// Sends request `i` and validates its answer: the index of its first document, and its
    /// documents' answers.
    async fn one(&self, i: usize) -> Result<(usize, Vec<Answered>), Failure> {
        let (first, docs) = match self.phase.op {
            Operation::Index => (
                i * self.workload.spec.request_size,
                self.workload.index_docs(i),
            ),
            Operation::Search => self.workload.query_docs(i),
        };
        let (url, body) = self.target.request(self.phase.op, &docs, &self.parameters);
        let answer = post_ok(&self.http, &url, body, load::NO_LIMIT).await?;
        let answered = validate(
            &answer.body,
            self.phase.op,
            docs.len(),
            self.phase.expected_matches,
        )?;
        Ok((first, answered))
    }
}

/// One phase to run.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    /// Shown in progress lines: `index`, `query flat`.
    pub(crate) label: String,
    pub(crate) op: Operation,
    /// Its clients, bounds and request timeout.
    pub(crate) load: LoadConfig,
    /// Searches: the number of matches every query must have.
    pub(crate) expected_matches: usize,
}

impl Phase {
    /// Indexing under `load`.
    pub(crate) fn index(load: LoadConfig) -> Self {
        Self {
            label: "index".into(),
            op: Operation::Index,
            load,
            expected_matches: 0,
        }
    }

    /// Searches shown as `label`, under `load`, each query answered with `matches` matches.
    pub(crate) fn search(label: impl Into<String>, load: LoadConfig, matches: usize) -> Self {
        Self {
            label: label.into(),
            op: Operation::Search,
            load,
            expected_matches: matches,
        }
    }
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
    let parameters = match phase.op {
        Operation::Index => json!({}),
        Operation::Search => json!({"top_k": workload.spec.top_k}),
    };
    let client = Arc::new(Client {
        http: http.clone(),
        target: target.clone(),
        workload: Arc::clone(workload),
        phase: phase.clone(),
        parameters,
    });
    // Queries are answered once each for recall: the first pass over them.
    let first_pass = match phase.op {
        Operation::Index => 0,
        Operation::Search => workload.query_batches(),
    };
    let live = Arc::new(Live::default());
    let progress = Progress::start(&phase.label, live.clone(), &phase.load, opts);
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let kept = answers.clone();
    let measured = load::run_observed(&phase.load, &live, move |i| {
        let (client, kept) = (client.clone(), kept.clone());
        async move {
            let (first, answered) = client.one(i).await?;
            let documents = answered.len();
            if i < first_pass {
                let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                for (j, d) in answered.into_iter().enumerate() {
                    kept.insert(first + j, d.matches);
                }
            }
            Ok(Done::documents(documents))
        }
    })
    .await;
    progress.finish();
    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(PoisonError::into_inner));
    PhaseResult { measured, answers }
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
            report_every: Duration::from_secs(60),
            display: Display::Quiet,
        };
        let target = Target::new(&base, Protocol::Native);
        let mut phase = Phase::search("query", LoadConfig::new(2, 3, Duration::from_secs(30)), 3);
        let http = crate::load::http_client();
        let short = run_phase(&http, &target, &workload, &phase, &opts).await;
        assert_eq!(short.measured.requests(), 0);
        let wrong = &short.measured.errors["wrong_matches"];
        assert_eq!(wrong.count, 3);
        assert!(wrong.samples[0].contains("2 matches instead of 3"));
        assert!(short.answers.is_empty());

        phase.expected_matches = 2;
        let right = run_phase(&http, &target, &workload, &phase, &opts).await;
        let m = &right.measured;
        assert_eq!((m.requests(), m.error_count()), (3, 0));
        // The 5 queries, 2 a request: requests 0..3 are the first pass over all of them.
        assert_eq!(right.answers.len(), 5);
        assert_eq!(m.documents, 5);
        let summary = serde_json::to_value(right.summary()).expect("JSON");
        assert_eq!(summary["documents"], 5);
        assert_eq!(summary["per_second"][0]["requests"], 3);
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
}
