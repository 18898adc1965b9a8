//! `flowmesh-bench`: flowmesh's benchmark harness.
//!
//! `flowmesh-bench overhead` measures what the mesh itself costs: a Flow of trivial executors
//! (hash encoder, in-memory brute-force index, ranker), indexed with short texts and then
//! searched at several concurrencies, reporting requests/s, latency percentiles and the time
//! spent in each executor (from the gateway's `Server-Timing` header). `flowmesh-bench encoder`
//! compares the encoder service's throughput with its model's raw throughput, for a text or an
//! image model. `flowmesh-bench indexer` measures each index backend's queries/s and recall@k,
//! in-process and through the indexer service over HTTP. `flowmesh-bench run` is the seed's
//! cloud benchmark (text or image Flow, index then query phases, the indexer comparison).
//! `flowmesh-bench compare` runs the same workloads and topology on flowmesh and on Jina 3.34
//! and reports their ratios. `flowmesh-bench abuse` measures normal search traffic, calm and
//! under abusive clients, and what the abusive requests get back.

#![forbid(unsafe_code)]

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod abuse;
mod cpu;
mod encoder;
mod indexer;
mod jina;
mod launch;
mod load;
mod seed;
mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "flowmesh-bench", version, about = "Benchmarks for flowmesh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Per-request overhead of the mesh with trivial executors.
    Overhead(OverheadArgs),
    /// The encoder service's throughput against its model's raw throughput.
    Encoder(encoder::EncoderArgs),
    /// Queries/s and recall of each index backend, in-process and over HTTP.
    Indexer(indexer::IndexerArgs),
    /// The seed's cloud benchmark: index then query a text or image Flow, with validation,
    /// a results table, plots and the indexer comparison.
    Run(seed::RunArgs),
    /// The same workloads on flowmesh and on Jina 3.34, side by side, with their ratios.
    Compare(jina::CompareArgs),
    /// Normal search throughput and latency, calm and while abusive clients send oversized and
    /// invalid requests and hold slowloris and idle connections, interleaved over rounds.
    Abuse(abuse::AbuseArgs),
}

#[derive(Debug, clap::Args)]
struct OverheadArgs {
    /// A running gateway to target; without it the Flow is started with `flowmesh up`.
    #[arg(long)]
    gateway: Option<String>,
    /// The Flow to start when no gateway is given.
    #[arg(long, default_value = "flows/overhead.yml")]
    flow: PathBuf,
    /// Documents to index before searching.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Documents per index request.
    #[arg(long, default_value_t = 100)]
    request_size: usize,
    /// Concurrencies of the search phases, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Most search requests per phase.
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Longest duration of a search phase, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Matches per query; every answer is checked to have exactly this many.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

const WORDS: &[&str] = &[
    "search", "mesh", "vector", "index", "shard", "replica", "query", "document", "rust", "fast",
    "neural", "model", "token", "sentence", "image", "horse", "river", "mountain", "city", "light",
    "green", "blue", "quiet", "storm", "garden", "engine", "signal", "market", "winter", "summer",
];

/// A short deterministic text for item `i`.
fn text(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut words = Vec::with_capacity(8);
    for _ in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    format!("{} {i}", words.join(" "))
}

fn ms(seconds: f64) -> f64 {
    seconds * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Overhead(args) => overhead(args).await,
        Cmd::Encoder(args) => encoder::run(args).await,
        Cmd::Indexer(args) => indexer::run(args).await,
        Cmd::Run(args) => seed::run(args).await,
        Cmd::Compare(args) => jina::run(args).await,
        Cmd::Abuse(args) => abuse::run(args).await,
    }
}

async fn overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let launched = match &args.gateway {
        Some(_) => None,
        None => Some(launch::Launched::flow(&args.flow).await?),
    };
    let gateway = match (&args.gateway, &launched) {
        (Some(g), _) => g.trim_end_matches('/').to_owned(),
        (None, Some(l)) => l.base.clone(),
        (None, None) => unreachable!("launched when no gateway is given"),
    };
    let client = load::http_client();
    eprintln!("indexing {} documents into {gateway} ...", args.docs);
    let batches = args.docs.div_ceil(args.request_size);
    let (docs, size) = (args.docs, args.request_size);
    let index = load::run(
        &client,
        &format!("{gateway}/index"),
        4,
        batches,
        Duration::from_secs(3600),
        move |b| {
            let data: Vec<Value> = (b * size..((b + 1) * size).min(docs))
                .map(|i| json!({"id": format!("doc-{i}"), "text": text(i)}))
                .collect();
            Bytes::from(json!({"data": data}).to_string())
        },
        |_| Ok(()),
    )
    .await;
    anyhow::ensure!(
        index.errors == 0,
        "indexing failed: {:?}",
        index.error_samples
    );
    let index_docs_per_s = args.docs as f64 / index.elapsed.as_secs_f64();
    eprintln!("indexed at {index_docs_per_s:.0} docs/s");

    let mut rows = Vec::new();
    for &c in &args.concurrency {
        let top_k = args.top_k;
        let m = load::run(
            &client,
            &format!("{gateway}/search"),
            c,
            args.requests,
            Duration::from_secs(args.duration_secs),
            move |i| {
                Bytes::from(
                    json!({"data": [{"text": text(1_000_003 + i)}], "parameters": {"top_k": top_k}})
                        .to_string(),
                )
            },
            move |body| check_matches(body, top_k),
        )
        .await;
        let mut lat = m.latencies.clone();
        lat.sort_by(f64::total_cmp);
        let executors: Vec<(String, f64)> = m
            .executor_ms
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                (k.clone(), load::quantile(&v, 0.5))
            })
            .collect();
        let p50 = ms(load::quantile(&lat, 0.5));
        let in_executors: f64 = executors.iter().map(|(_, v)| v).sum();
        let row = json!({
            "concurrency": c,
            "requests": lat.len(),
            "errors": m.errors,
            "error_samples": m.error_samples,
            "seconds": m.elapsed.as_secs_f64(),
            "requests_per_s": lat.len() as f64 / m.elapsed.as_secs_f64(),
            "p50_ms": p50,
            "p95_ms": ms(load::quantile(&lat, 0.95)),
            "p99_ms": ms(load::quantile(&lat, 0.99)),
            "executor_p50_ms": executors.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
            "outside_executors_p50_ms": p50 - in_executors,
        });
        eprintln!(
            "concurrency {c}: {:.0} requests/s, p50 {p50:.3} ms, errors {}",
            row["requests_per_s"].as_f64().unwrap_or(0.0),
            m.errors
        );
        rows.push(row);
    }
    let result = json!({
        "benchmark": "overhead",
        "gateway": gateway,
        "docs": args.docs,
        "top_k": args.top_k,
        "index_docs_per_s": index_docs_per_s,
        "search": rows,
    });
    println!("{}", table(&result));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    }
    if let Some(l) = launched {
        l.stop().await;
    }
    let errors: u64 = rows.iter().filter_map(|r| r["errors"].as_u64()).sum();
    anyhow::ensure!(errors == 0, "{errors} search requests failed");
    Ok(())
}

/// Every query of a search answer must have exactly `top_k` matches.
fn check_matches(body: &[u8], top_k: usize) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let data = v["data"].as_array().ok_or("no data")?;
    for d in data {
        let n = d["matches"].as_array().map_or(0, Vec::len);
        if n != top_k {
            return Err(format!("{n} matches instead of {top_k}"));
        }
    }
    Ok(())
}

fn table(result: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| concurrency | requests | requests/s | p50 ms | p95 ms | p99 ms | errors | in executors (p50 ms) | outside executors (p50 ms) |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in result["search"].as_array().into_iter().flatten() {
        let execs: Vec<String> = r["executor_p50_ms"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} |",
            r["concurrency"],
            r["requests"],
            r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p95_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["errors"],
            execs.join(", "),
            r["outside_executors_p50_ms"].as_f64().unwrap_or(f64::NAN),
        );
    }
    s
}
