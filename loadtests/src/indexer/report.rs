//! The results of `flowmesh-bench indexer`: typed rows (the JSON of `--out`), their Markdown
//! tables, and the progress lines.

use serde::Serialize;

use super::http_side::Loading;
use super::measure::{CallShape, Phase};
use super::{IndexerArgs, SetShape};
use crate::table::{Align, Table};

/// One line on stderr per measurement, as it finishes.
pub(super) fn progress(p: &Phase) {
    let server = p
        .server_mean_ms
        .map_or(String::new(), |ms| format!(" (in the service {ms:.2} ms)"));
    eprintln!(
        "    {:<10} batch {:>3} c={}: {:>9.1} q/s, recall {:.4}, mean {:.2} ms{server}, {} queries, errors {}",
        p.mode, p.shape.batch, p.shape.concurrency, p.queries_per_s, p.recall, p.mean_ms, p.queries, p.load.errors
    );
    for e in &p.load.error_samples {
        eprintln!("      error: {e}");
    }
}

/// The whole benchmark (`--out`): its flags, the machine, and every data set.
#[derive(Debug, Serialize)]
pub(super) struct IndexerResult<'a> {
    pub(super) benchmark: &'static str,
    #[serde(flatten)]
    pub(super) settings: &'a IndexerArgs,
    pub(super) machine: Machine,
    pub(super) sets: Vec<SetResult>,
}

/// The CPU model, core count and load average, for the record.
#[derive(Debug, Serialize)]
pub(super) struct Machine {
    cpu: Option<String>,
    cores: usize,
    load_average: Option<String>,
}

/// What producing a data set's ground truth took and how well it agrees with f64 arithmetic.
#[derive(Debug, Clone, Serialize)]
pub(super) struct DataSummary {
    pub(super) generate_s: f64,
    pub(super) ground_truth: &'static str,
    pub(super) ground_truth_s: f64,
    pub(super) f64_verified_queries: usize,
    pub(super) f64_agreement_recall: f64,
}

/// Every backend on one data set.
#[derive(Debug, Serialize)]
pub(super) struct SetResult {
    pub(super) dim: usize,
    #[serde(flatten)]
    pub(super) shape: SetShape,
    pub(super) data: DataSummary,
    pub(super) flat_vs_faiss_flat: Option<Vec<HeadToHead>>,
    pub(super) backends: Vec<BackendRow>,
}

impl SetResult {
    /// Failed calls of every measurement.
    pub(super) fn errors(&self) -> usize {
        let phases = self
            .backends
            .iter()
            .flat_map(|b| &b.phases)
            .map(|p| p.load.errors);
        let heads = self.flat_vs_faiss_flat.iter().flatten().map(|h| h.errors);
        phases.chain(heads).sum()
    }
}

/// `flat` against `faiss:Flat` in-process for one call size.
#[derive(Debug, Serialize)]
pub(super) struct HeadToHead {
    pub(super) batch: usize,
    pub(super) flat_queries_per_s: f64,
    pub(super) faiss_flat_queries_per_s: f64,
    pub(super) ratio: f64,
    pub(super) errors: usize,
}

impl HeadToHead {
    /// `flat`'s measurement `a` against `faiss:Flat`'s `b`, both in calls of `batch`.
    pub(super) fn new(batch: usize, a: &Phase, b: &Phase) -> Self {
        Self {
            batch,
            flat_queries_per_s: a.queries_per_s,
            faiss_flat_queries_per_s: b.queries_per_s,
            ratio: a.queries_per_s / b.queries_per_s,
            errors: a.load.errors + b.load.errors,
        }
    }
}

/// Every measurement of one backend.
#[derive(Debug, Serialize)]
pub(super) struct BackendRow {
    pub(super) backend: String,
    pub(super) params: Vec<String>,
    pub(super) flags: Vec<String>,
    /// In-process: storing and building.
    pub(super) build_s: f64,
    pub(super) load_average: Option<String>,
    pub(super) phases: Vec<Phase>,
    pub(super) codec_ms: Vec<Codec>,
    /// Over HTTP: indexing, and the service's loading and building.
    #[serde(flatten)]
    pub(super) http: Option<Loading>,
}

impl BackendRow {
    /// The measurement with this mode, call size and concurrency.
    fn phase(&self, mode: &'static str, batch: usize, c: usize) -> Option<&Phase> {
        self.phases.iter().find(|p| {
            p.mode == mode
                && p.shape
                    == CallShape {
                        batch,
                        concurrency: c,
                    }
        })
    }

    fn qps(&self, mode: &'static str, batch: usize, c: usize) -> Option<f64> {
        self.phase(mode, batch, c).map(|p| p.queries_per_s)
    }

    fn params(&self) -> String {
        self.params.join(" ")
    }

    /// Recall of the in-process batched run, and the HTTP one's when it differs.
    fn recall_cell(&self, batch: usize) -> String {
        let of = |mode| self.phase(mode, batch, 1).map(|p| p.recall);
        match (of("in-process"), of("http")) {
            (Some(a), Some(b)) if (a - b).abs() > 5e-4 => format!("{a:.3} / {b:.3}"),
            (Some(a), _) => format!("{a:.3}"),
            (None, Some(b)) => format!("{b:.3}"),
            (None, None) => "-".into(),
        }
    }

    /// Queries/s in-process and over HTTP at concurrency `c`, single and batched, and their
    /// ratio batched.
    fn rates(&self, batch: usize, c: usize) -> [String; 5] {
        [
            cell(self.qps("in-process", 1, c)),
            cell(self.qps("in-process", batch, c)),
            cell(self.qps("http", 1, c)),
            cell(self.qps("http", batch, c)),
            ratio(self.qps("http", batch, c), self.qps("in-process", batch, c)),
        ]
    }
}

/// The service's decoding and encoding, and the client's decoding, of one call.
#[derive(Debug, Serialize)]
pub(super) struct Codec {
    pub(super) batch: usize,
    pub(super) service_ms: f64,
    pub(super) client_ms: f64,
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
        _ => "-".into(),
    }
}

/// The columns `backend | params`, then `rest`, right-aligned.
fn backend_table(rest: &[String]) -> Table {
    let mut columns = vec![
        ("backend".to_owned(), Align::Left),
        ("params".to_owned(), Align::Left),
    ];
    columns.extend(rest.iter().map(|c| (c.clone(), Align::Right)));
    Table::new(columns)
}

/// The tables of one data set.
pub(super) fn table(set: &SetResult) -> String {
    let (batch, k) = (set.shape.batch, set.shape.k);
    let mut s = format!(
        "{} x {} (queries/s at concurrency 1; build s: in-process store + build / over HTTP index + build)\n\n",
        set.shape.n, set.dim
    );
    let mut t = backend_table(&[
        "build s".into(),
        "in-process q/s (1)".into(),
        format!("in-process q/s (batch {batch})"),
        "HTTP q/s (1)".into(),
        format!("HTTP q/s (batch {batch})"),
        format!("HTTP / in-process (batch {batch})"),
        format!("recall@{k}"),
    ]);
    for r in &set.backends {
        let build = match r.http {
            Some(h) => format!("{:.1} / {:.1}", r.build_s, h.load_s),
            None => format!("{:.1}", r.build_s),
        };
        let mut cells = vec![r.backend.clone(), r.params(), build];
        cells.extend(r.rates(batch, 1));
        cells.push(r.recall_cell(batch));
        t.row(cells);
    }
    s.push_str(&t.render());
    concurrency_tables(&mut s, &set.backends, batch);
    latency_table(&mut s, &set.backends, batch);
    for h in set.flat_vs_faiss_flat.iter().flatten() {
        s.push_str(&format!(
            "{}flat / faiss:Flat in-process, concurrency 1, calls of {} (alternating slices): {:.0} / {:.0} q/s = {:.0}%\n",
            if h.batch == 1 { "\n" } else { "" },
            h.batch,
            h.flat_queries_per_s,
            h.faiss_flat_queries_per_s,
            100.0 * h.ratio,
        ));
    }
    s
}

/// Queries/s at the concurrencies above 1, in-process threads against HTTP connections.
fn concurrency_tables(s: &mut String, rows: &[BackendRow], batch: usize) {
    let mut levels: Vec<usize> = rows
        .iter()
        .flat_map(|r| &r.phases)
        .map(|p| p.shape.concurrency)
        .filter(|&c| c > 1)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    for c in levels {
        s.push_str(&format!(
            "\nconcurrency {c} (threads in-process, connections over HTTP), queries/s:\n\n"
        ));
        let mut t = backend_table(&[
            "in-process (1)".into(),
            format!("in-process (batch {batch})"),
            "HTTP (1)".into(),
            format!("HTTP (batch {batch})"),
            format!("HTTP / in-process (batch {batch})"),
        ]);
        for r in rows {
            let mut cells = vec![r.backend.clone(), r.params()];
            cells.extend(r.rates(batch, c));
            t.row(cells);
        }
        s.push_str(&t.render());
    }
}

/// Where the time of an HTTP call goes, at concurrency 1: the same call in-process, inside the
/// service (decoding, search, encoding: from its request histogram), and as the client saw it.
fn latency_table(s: &mut String, rows: &[BackendRow], batch: usize) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    s.push_str(
        "\nmean ms per call at concurrency 1: in-process / inside the service / at the HTTP client; \
         codec: the service's decoding and encoding + the client's decoding of the same call\n\n",
    );
    let mut t = backend_table(&[
        "single query".into(),
        format!("batch of {batch}"),
        "codec (single)".into(),
        format!("codec (batch {batch})"),
    ]);
    for r in rows {
        let time = |b: usize| {
            format!(
                "{} / {} / {}",
                f(r.phase("in-process", b, 1).map(|p| p.mean_ms)),
                f(r.phase("http", b, 1).and_then(|p| p.server_mean_ms)),
                f(r.phase("http", b, 1).map(|p| p.mean_ms))
            )
        };
        let codec = |b: usize| {
            r.codec_ms
                .iter()
                .find(|c| c.batch == b)
                .map_or("-".into(), |c| {
                    format!("{} + {}", f(Some(c.service_ms)), f(Some(c.client_ms)))
                })
        };
        t.row(vec![
            r.backend.clone(),
            r.params(),
            time(1),
            time(batch),
            codec(1),
            codec(batch),
        ]);
    }
    s.push_str(&t.render());
}

/// The CPU model, core count and load average, for the record.
pub(super) fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
    });
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        load_average: load_average(),
    }
}

/// `/proc/loadavg`'s first three fields.
pub(super) fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
