//! `flowmesh-bench encoder`: the encoder service's throughput over HTTP against the raw
//! throughput of its model in-process, on the same machine and the same model settings.
//!
//! Raw: one thread embeds batches of `--raw-batch` texts back to back. Service: `flowmesh-encoder`
//! with the same flags serves `POST /encode` to closed-loop clients at each concurrency, with
//! requests of each size. Every answer must hold one embedding per text.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use serde_json::{json, Value};

use crate::launch::Launched;
use crate::load;

#[derive(Debug, clap::Args)]
pub(crate) struct EncoderArgs {
    /// Concurrencies, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Texts per request, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    texts_per_request: Vec<usize>,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Texts per model call in the raw loop.
    #[arg(long, default_value_t = 32)]
    raw_batch: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The encoder's flags (model, threads, batching), after `--`; the same for the raw loop and
    /// the service. Example: `-- --model hash --dim 64 --workers 1`.
    #[arg(last = true)]
    encoder: Vec<String>,
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "search",
    "engine",
    "finds",
    "similar",
    "documents",
    "quickly",
    "while",
    "people",
    "walk",
    "along",
    "quiet",
    "river",
    "under",
    "bright",
    "summer",
    "light",
    "and",
    "talk",
    "about",
    "music",
    "horses",
    "mountains",
    "cities",
    "with",
    "old",
    "stone",
    "bridges",
];

/// A sentence of 8 to 24 words, the same for the same `i`.
fn sentence(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 8 + (next() % 17) as usize;
    (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) async fn run(args: EncoderArgs) -> anyhow::Result<()> {
    let argv = std::iter::once("flowmesh-encoder".to_owned()).chain(args.encoder.iter().cloned());
    let config = flowmesh_encoder::Config::try_parse_from(argv)?;
    let model = config.model()?;
    let duration = Duration::from_secs(args.duration_secs);

    let raw_batch = args.raw_batch.max(1);
    eprintln!(
        "raw model throughput, batches of {raw_batch}, {}s ...",
        args.duration_secs
    );
    let raw = tokio::task::spawn_blocking(move || {
        let texts: Vec<String> = (0..4096).map(sentence).collect();
        let start = Instant::now();
        let mut done = 0usize;
        let mut i = 0usize;
        while start.elapsed() < duration {
            let batch: Vec<&str> = (0..raw_batch)
                .map(|j| texts[(i + j) % texts.len()].as_str())
                .collect();
            let out = model.embed(&batch).expect("the model embeds the batch");
            assert_eq!(out.len(), batch.len(), "one embedding per text");
            done += batch.len();
            i += raw_batch;
        }
        done as f64 / start.elapsed().as_secs_f64()
    })
    .await?;
    eprintln!("raw: {raw:.0} texts/s");

    let service = Launched::service("flowmesh-encoder", &args.encoder).await?;
    let client = load::http_client();
    let url = format!("{}/encode", service.base);
    let mut rows = Vec::new();
    for &per_request in &args.texts_per_request {
        for &c in &args.concurrency {
            let m = load::run(
                &client,
                &url,
                c,
                usize::MAX,
                duration,
                move |i| {
                    let texts: Vec<String> = (0..per_request)
                        .map(|j| sentence(i * per_request + j))
                        .collect();
                    Bytes::from(json!({ "texts": texts }).to_string())
                },
                move |body| check(body, per_request),
            )
            .await;
            let mut lat = m.latencies.clone();
            lat.sort_by(f64::total_cmp);
            let texts_per_s = (lat.len() * per_request) as f64 / m.elapsed.as_secs_f64();
            eprintln!("{per_request} texts/request, concurrency {c}: {texts_per_s:.0} texts/s ({:.0}% of raw), errors {}", 100.0 * texts_per_s / raw, m.errors);
            rows.push(json!({
                "texts_per_request": per_request,
                "concurrency": c,
                "requests": lat.len(),
                "errors": m.errors,
                "error_samples": m.error_samples,
                "texts_per_s": texts_per_s,
                "of_raw": texts_per_s / raw,
                "p50_ms": load::quantile(&lat, 0.5) * 1e3,
                "p99_ms": load::quantile(&lat, 0.99) * 1e3,
            }));
        }
    }
    service.stop().await;
    let result = json!({
        "benchmark": "encoder",
        "encoder_flags": args.encoder,
        "raw_batch": raw_batch,
        "raw_texts_per_s": raw,
        "service": rows,
    });
    println!("{}", table(&result));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
    }
    let errors: u64 = rows.iter().filter_map(|r| r["errors"].as_u64()).sum();
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// An answer must hold `n` embeddings of the same length.
fn check(body: &[u8], n: usize) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let embeddings = v["embeddings"].as_array().ok_or("no embeddings")?;
    if embeddings.len() != n {
        return Err(format!("{} embeddings for {n} texts", embeddings.len()));
    }
    Ok(())
}

fn table(result: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "raw model: {:.0} texts/s (batches of {})\n",
        result["raw_texts_per_s"].as_f64().unwrap_or(0.0),
        result["raw_batch"]
    );
    let _ = writeln!(
        s,
        "| texts/request | concurrency | texts/s | of raw | p50 ms | p99 ms | errors |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    for r in result["service"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0}% | {:.2} | {:.2} | {} |",
            r["texts_per_request"],
            r["concurrency"],
            r["texts_per_s"].as_f64().unwrap_or(0.0),
            100.0 * r["of_raw"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["errors"],
        );
    }
    s
}
