//! `flowmesh-bench encoder`: the encoder service's throughput over HTTP against the raw
//! throughput of its model in-process, on the same machine and the same model settings.
//!
//! Raw: one thread runs the model on batches of `--raw-batch` inputs back to back (texts, or
//! images already decoded, resized and normalised: the model call alone), for the same duration
//! just before each service row. Service: `flowmesh-encoder` with the same flags serves
//! `POST /encode` to closed-loop clients at each concurrency, with requests of each size; for an
//! image model each image is a JPEG sent as base64, decoded and prepared by the service. Every
//! answer must hold one embedding per input of the model's dimension.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use flowmesh_encoder::{Batch, ImageTensor, Modality, Model};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cpu;
use crate::launch::Launched;
use crate::load;
use crate::workload::Workload;

#[derive(Debug, clap::Args)]
pub(crate) struct EncoderArgs {
    /// Concurrencies, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Inputs (texts or images) per request, comma separated.
    #[arg(
        long,
        alias = "texts-per-request",
        value_delimiter = ',',
        default_value = "1,50"
    )]
    per_request: Vec<usize>,
    /// Seconds of each measurement (a phase ends when the requests sent by then are answered).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Inputs per model call in the raw loop.
    #[arg(long, default_value_t = 32)]
    raw_batch: usize,
    /// Side of the generated JPEG images, in pixels (image models).
    #[arg(long, default_value_t = 224)]
    image_side: u32,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The encoder's flags (model, threads, batching), after `--`; the same for the raw loop and
    /// the service. Example: `-- --model hash --dim 64 --workers 1`.
    #[arg(last = true)]
    encoder: Vec<String>,
}

pub(crate) async fn run(args: EncoderArgs) -> anyhow::Result<()> {
    let argv = std::iter::once("flowmesh-encoder".to_owned()).chain(args.encoder.iter().cloned());
    let config = flowmesh_encoder::Config::try_parse_from(argv)?;
    let model = config.model()?;
    let workload = Arc::new(match model.modality() {
        Modality::Text => Workload::texts(),
        Modality::Image(spec) => Workload::images(
            &spec,
            args.image_side,
            config.max_image_pixels,
            &args.per_request,
        )?,
    });
    let unit = workload.unit();
    if workload.prepare_seconds() > 0.0 {
        eprintln!(
            "preparing one image (base64, decoding, resizing, normalising): {:.2} ms",
            workload.prepare_seconds() * 1e3
        );
    }
    let duration = Duration::from_secs(args.duration_secs);
    let raw_batch = args.raw_batch.max(1);
    let service = Launched::service("flowmesh-encoder", &args.encoder).await?;
    let client = load::http_client();
    let url = format!("{}/encode", service.base);
    let mut rows = Vec::new();
    for &per_request in &args.per_request {
        // One request of the size first: the model's first calls at a new batch size are slow.
        let warm = load::post(&client, &url, workload.body(0, per_request)).await?;
        anyhow::ensure!(
            warm.status == 200,
            "warm-up: status {}: {}",
            warm.status,
            String::from_utf8_lossy(&warm.body)
        );
        for &c in &args.concurrency {
            // The raw model just before each row (the service idle meanwhile), so that each ratio
            // compares phases seconds apart: this machine's speed drifts by tens of percent.
            let raw = {
                let (model, workload) = (model.clone(), workload.clone());
                tokio::task::spawn_blocking(move || {
                    raw_throughput(model.as_ref(), &workload, raw_batch, duration)
                })
                .await??
            };
            let bodies = workload.clone();
            let cpu_before = (service.pid().and_then(cpu::seconds), cpu::own_seconds());
            let batches_before = batches(&client, &service.base).await;
            let m = load::run(
                &client,
                &url,
                c,
                usize::MAX,
                duration,
                move |i| bodies.body(i, per_request),
                move |body| check(body, per_request),
            )
            .await;
            let mean_batch = batches(&client, &service.base)
                .await
                .zip(batches_before)
                .and_then(|((sum, n), (sum0, n0))| (n > n0).then(|| (sum - sum0) / (n - n0)));
            let inputs = (m.latencies.len() * per_request) as f64;
            let cpu_ms =
                |before: Option<f64>, after: Option<f64>| Some((after? - before?) * 1e3 / inputs);
            let cpu = ServiceCpu {
                service_ms: cpu_ms(cpu_before.0, service.pid().and_then(cpu::seconds)),
                client_ms: cpu_ms(cpu_before.1, cpu::own_seconds()),
                mean_batch,
            };
            let row = row(per_request, c, &raw, &cpu, &m);
            eprintln!(
                "{per_request} {unit}/request, concurrency {c}: {:.1} {unit}/s, raw {:.1} ({:.0}%); CPU ms/{unit}: raw {:.2}, service {:.2}, client {:.2}; mean batch {:.1}; errors {}",
                row["per_s"].as_f64().unwrap_or(0.0),
                raw.per_s,
                100.0 * row["of_raw"].as_f64().unwrap_or(0.0),
                raw.cpu_ms.unwrap_or(f64::NAN),
                cpu.service_ms.unwrap_or(f64::NAN),
                cpu.client_ms.unwrap_or(f64::NAN),
                cpu.mean_batch.unwrap_or(f64::NAN),
                m.errors
            );
            rows.push(row);
        }
    }
    service.stop().await;
    let result = json!({
        "benchmark": "encoder",
        "encoder_flags": args.encoder,
        "unit": unit,
        "raw_batch": raw_batch,
        "prepare_ms_per_input": workload.prepare_seconds() * 1e3,
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

/// The raw loop's inputs per second and CPU milliseconds per input.
pub(crate) struct Raw {
    pub(crate) per_s: f64,
    pub(crate) cpu_ms: Option<f64>,
}

/// CPU milliseconds per input of the service and of this load generator during a service phase,
/// and the mean size of the model calls the service made.
struct ServiceCpu {
    service_ms: Option<f64>,
    client_ms: Option<f64>,
    mean_batch: Option<f64>,
}

/// The sum and count of the service's batch sizes so far, from its `/metrics`.
async fn batches(client: &load::HttpClient, base: &str) -> Option<(f64, f64)> {
    let answer = load::get(client, &format!("{base}/metrics")).await.ok()?;
    let text = String::from_utf8_lossy(&answer.body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((
        value("flowmesh_encoder_batch_size_sum ")?,
        value("flowmesh_encoder_batch_size_count ")?,
    ))
}

/// One row of results: the service's phase `m` against the raw loop's `raw`.
fn row(
    per_request: usize,
    concurrency: usize,
    raw: &Raw,
    cpu: &ServiceCpu,
    m: &load::Measured,
) -> Value {
    let mut lat = m.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let per_s = (lat.len() * per_request) as f64 / m.elapsed.as_secs_f64();
    json!({
        "per_request": per_request,
        "concurrency": concurrency,
        "requests": lat.len(),
        "seconds": m.elapsed.as_secs_f64(),
        "errors": m.errors,
        "error_samples": m.error_samples,
        "per_s": per_s,
        "raw_per_s": raw.per_s,
        "of_raw": per_s / raw.per_s,
        "p50_ms": load::quantile(&lat, 0.5) * 1e3,
        "p99_ms": load::quantile(&lat, 0.99) * 1e3,
        "raw_cpu_ms_per_input": raw.cpu_ms,
        "service_cpu_ms_per_input": cpu.service_ms,
        "client_cpu_ms_per_input": cpu.client_ms,
        "mean_batch": cpu.mean_batch,
    })
}

/// Inputs per second of `model` on batches of `batch` back to back for `duration`, after one
/// untimed call.
pub(crate) fn raw_throughput(
    model: &dyn Model,
    workload: &Workload,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Raw> {
    // One batch of images, made once: the model stacks its tensors into one input each call,
    // as it does for the service.
    let images: Vec<ImageTensor> = match workload {
        Workload::Images { tensors, .. } => (0..batch)
            .map(|j| tensors[j % tensors.len()].clone())
            .collect(),
        Workload::Texts { .. } => Vec::new(),
    };
    let call = |i: usize| -> anyhow::Result<()> {
        let out = match workload {
            Workload::Texts { texts } => {
                let batch: Vec<&str> = (0..batch)
                    .map(|j| texts[(i + j) % texts.len()].as_str())
                    .collect();
                model.embed(Batch::Texts(&batch))?
            }
            Workload::Images { .. } => model.embed(Batch::Images(&images))?,
        };
        anyhow::ensure!(out.len() == batch, "one embedding per input");
        Ok(())
    };
    call(0)?;
    // This process does nothing else meanwhile: its CPU time is the model's.
    let cpu_before = cpu::own_seconds();
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < duration {
        call(done)?;
        done += batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_ms = cpu::own_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) * 1e3 / done as f64);
    Ok(Raw {
        per_s: done as f64 / seconds,
        cpu_ms,
    })
}

/// What `check` reads of an answer: the embeddings' lengths, without converting the floats.
#[derive(Deserialize)]
struct Answer {
    dim: usize,
    embeddings: Vec<Vec<IgnoredAny>>,
}

/// An answer must hold `n` embeddings of `dim` values.
fn check(body: &[u8], n: usize) -> Result<(), String> {
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("bad answer: {e}"))?;
    if a.embeddings.len() != n {
        return Err(format!("{} embeddings for {n} inputs", a.embeddings.len()));
    }
    if let Some(e) = a.embeddings.iter().find(|e| e.len() != a.dim) {
        return Err(format!("an embedding of {} values, dim {}", e.len(), a.dim));
    }
    Ok(())
}

fn table(result: &Value) -> String {
    let unit = result["unit"].as_str().unwrap_or("inputs");
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "raw model: batches of {}, measured just before each row; CPU: ms per {} of the raw loop, the service and the load generator\n",
        result["raw_batch"],
        unit.trim_end_matches('s')
    );
    let _ = writeln!(
        s,
        "| {unit}/request | concurrency | {unit}/s | raw {unit}/s | of raw | p50 ms | p99 ms | CPU raw | CPU service | CPU client | errors |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in result["service"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.0}% | {:.1} | {:.1} | {} | {} | {} | {:.1} | {} |",
            r["per_request"],
            r["concurrency"],
            r["per_s"].as_f64().unwrap_or(0.0),
            r["raw_per_s"].as_f64().unwrap_or(0.0),
            100.0 * r["of_raw"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            ms(&r["raw_cpu_ms_per_input"]),
            ms(&r["service_cpu_ms_per_input"]),
            ms(&r["client_cpu_ms_per_input"]),
            r["mean_batch"].as_f64().unwrap_or(f64::NAN),
            r["errors"],
        );
    }
    s
}
