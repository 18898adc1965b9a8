//! `flowmesh-bench overhead`: what the mesh itself costs. A Flow of trivial executors (hash
//! encoder, in-memory brute-force index, ranker) is indexed with short texts, then searched at
//! several concurrencies; it reports requests/s, latency percentiles and the time spent in
//! each executor (from the gateway's `Server-Timing` header).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::launch::Gateway;
use crate::load::{self, LoadConfig, Measured};
use crate::short;
use crate::table::{Align, Table};

#[derive(Debug, clap::Args)]
pub(crate) struct OverheadArgs {
    /// A running gateway to target; without it the Flow is started with `flowmesh up`.
    #[arg(long)]
    pub(crate) gateway: Option<String>,
    /// The Flow to start when no gateway is given.
    #[arg(long, default_value = "flows/overhead.yml")]
    pub(crate) flow: PathBuf,
    /// Documents to index before searching.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) docs: usize,
    /// Documents per index request.
    #[arg(long, default_value_t = 100)]
    pub(crate) request_size: usize,
    /// Concurrencies of the search phases, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub(crate) concurrency: Vec<usize>,
    /// Most search requests per phase.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) requests: usize,
    /// Longest duration of a search phase, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Matches per query; every answer is checked to have exactly this many.
    #[arg(long, default_value_t = 10)]
    pub(crate) top_k: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Compare two copies of the Flow, one with every credential off and one with an API key,
    /// the mesh token and TLS on every hop, searched in alternating order (docs/security.md).
    #[arg(long)]
    pub(crate) security: bool,
    /// With --security: rounds of every concurrency on each copy; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
}

/// The results (`--out`).
#[derive(Debug, Serialize)]
struct OverheadResult {
    benchmark: &'static str,
    gateway: String,
    docs: usize,
    top_k: usize,
    index_docs_per_s: f64,
    search: Vec<SearchRow>,
}

/// One search phase.
#[derive(Debug, Serialize)]
struct SearchRow {
    concurrency: usize,
    requests: usize,
    errors: usize,
    error_samples: Vec<String>,
    seconds: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// Median `Server-Timing` duration of each executor.
    executor_p50_ms: BTreeMap<String, f64>,
    /// The median latency less the executors' medians: the mesh's own cost.
    outside_executors_p50_ms: f64,
}

impl SearchRow {
    fn new(concurrency: usize, m: &Measured) -> Self {
        let executor_p50_ms: BTreeMap<String, f64> = m
            .executors
            .iter()
            .map(|(k, l)| (k.clone(), l.quantile_ms(0.5)))
            .collect();
        let p50_ms = m.latency_ms(0.5);
        Self {
            concurrency,
            requests: m.requests(),
            errors: m.error_count(),
            error_samples: m.error_samples(),
            seconds: m.elapsed.as_secs_f64(),
            requests_per_s: m.requests_per_s(),
            p50_ms,
            p95_ms: m.latency_ms(0.95),
            p99_ms: m.latency_ms(0.99),
            outside_executors_p50_ms: p50_ms - executor_p50_ms.values().sum::<f64>(),
            executor_p50_ms,
        }
    }
}

/// `flowmesh-bench overhead`.
pub(crate) async fn run(args: OverheadArgs) -> anyhow::Result<()> {
    if args.security {
        return crate::security::run(&args).await;
    }
    let gateway =
        Gateway::given_or_started(args.gateway.as_deref(), &args.flow, None, None).await?;
    let result = measure(&args, &gateway.base).await;
    gateway.stop().await;
    let result = result?;
    crate::report::publish(&table(&result), &result, args.out.as_deref())?;
    let errors: usize = result.search.iter().map(|r| r.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} search requests failed");
    Ok(())
}

async fn measure(args: &OverheadArgs, gateway: &str) -> anyhow::Result<OverheadResult> {
    let client = load::http_client();
    eprintln!("indexing {} documents into {gateway} ...", args.docs);
    let docs = Arc::new(short::documents(args.docs));
    let index = short::index(
        &client,
        gateway,
        docs,
        args.request_size,
        4,
        Duration::from_secs(3600),
    )
    .await;
    anyhow::ensure!(
        index.error_count() == 0,
        "indexing failed: {:?}",
        index.error_samples()
    );
    let index_docs_per_s = index.docs_per_s();
    eprintln!("indexed at {index_docs_per_s:.0} docs/s");
    let mut search = Vec::new();
    for &c in &args.concurrency {
        let config = LoadConfig::new(c, args.requests, Duration::from_secs(args.duration_secs));
        let m = short::search(&client, gateway, &config, args.top_k, short::query_text).await;
        let row = SearchRow::new(c, &m);
        eprintln!(
            "concurrency {c}: {:.0} requests/s, p50 {:.3} ms, errors {}",
            row.requests_per_s, row.p50_ms, row.errors
        );
        search.push(row);
    }
    Ok(OverheadResult {
        benchmark: "overhead",
        gateway: gateway.to_owned(),
        docs: args.docs,
        top_k: args.top_k,
        index_docs_per_s,
        search,
    })
}

fn table(result: &OverheadResult) -> String {
    let mut t = Table::new([
        ("concurrency", Align::Right),
        ("requests", Align::Right),
        ("requests/s", Align::Right),
        ("p50 ms", Align::Right),
        ("p95 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("errors", Align::Right),
        ("in executors (p50 ms)", Align::Left),
        ("outside executors (p50 ms)", Align::Right),
    ]);
    for r in &result.search {
        let execs: Vec<String> = r
            .executor_p50_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        t.row(vec![
            r.concurrency.to_string(),
            r.requests.to_string(),
            format!("{:.0}", r.requests_per_s),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p95_ms),
            format!("{:.3}", r.p99_ms),
            r.errors.to_string(),
            execs.join(", "),
            format!("{:.3}", r.outside_executors_p50_ms),
        ]);
    }
    t.render()
}
