//! `flowmesh-bench encoder`: the encoder service's throughput over HTTP against the raw
//! throughput of its model in-process, on the same machine and the same model settings.
//!
//! Raw: one thread runs the model on batches of `--raw-batch` inputs back to back (texts, or
//! images already decoded, resized and normalised: the model call alone), for the same duration
//! just before each service row. Service: `flowmesh-encoder` with the same flags serves
//! `POST /encode` to closed-loop clients at each concurrency, with requests of each size; for an
//! image model each image is a JPEG sent as base64, decoded and prepared by the service. Every
//! answer must hold one embedding per input of the model's dimension.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use flowmesh_encoder::{Batch, ImageTensor, Modality, Model};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::launch::Launched;
use crate::load::{self, Done, Failure, LoadConfig, Measured};
use crate::procstat;
use crate::table::{opt, Align, Table};
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
    /// Which texts a text model gets: `sentences` of 8 to 24 words, or `mixed` lengths of 4 to
    /// 40 words.
    #[arg(long, value_enum, default_value_t = TextKind::Sentences)]
    texts: TextKind,
    /// Extra encoder flags of a baseline service, repeated for several (for example
    /// `--baseline=--batch-order=arrival`): it runs beside the service with the same flags plus
    /// these, and each row measures both, one after the other, against the same raw loop.
    #[arg(long, allow_hyphen_values = true)]
    baseline: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The encoder's flags (model, threads, batching), after `--`; the same for the raw loop and
    /// the service. Example: `-- --model hash --dim 64 --workers 1`.
    #[arg(last = true)]
    encoder: Vec<String>,
}

/// The texts of a text model's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TextKind {
    Sentences,
    Mixed,
}

pub(crate) async fn run(args: EncoderArgs) -> anyhow::Result<()> {
    let argv = std::iter::once("flowmesh-encoder".to_owned()).chain(args.encoder.iter().cloned());
    let config = flowmesh_encoder::Config::try_parse_from(argv)?;
    let model = config.model()?;
    let workload = Arc::new(match model.modality() {
        Modality::Text if args.texts == TextKind::Mixed => Workload::mixed_texts(),
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
    let raw_batch = args.raw_batch.max(1);
    let service = Launched::service("flowmesh-encoder", &args.encoder).await?;
    let baseline = if args.baseline.is_empty() {
        None
    } else {
        let flags: Vec<String> = args.encoder.iter().chain(&args.baseline).cloned().collect();
        Some(Launched::service("flowmesh-encoder", &flags).await?)
    };
    let measured = service_rows(
        &args,
        &service,
        baseline.as_ref(),
        &model,
        &workload,
        raw_batch,
    )
    .await;
    service.stop().await;
    if let Some(baseline) = baseline {
        baseline.stop().await;
    }
    let result = EncoderResult {
        benchmark: "encoder",
        encoder_flags: args.encoder.clone(),
        baseline_flags: args.baseline.clone(),
        unit,
        raw_batch,
        prepare_ms_per_input: workload.prepare_seconds() * 1e3,
        service: measured?,
    };
    crate::report::publish(&table(&result), &result, args.out.as_deref())?;
    let errors: usize = result.service.iter().map(|r| r.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// The results (`--out`).
#[derive(Debug, Serialize)]
struct EncoderResult {
    benchmark: &'static str,
    encoder_flags: Vec<String>,
    baseline_flags: Vec<String>,
    unit: &'static str,
    raw_batch: usize,
    prepare_ms_per_input: f64,
    service: Vec<ServiceRow>,
}

/// One service phase against the raw loop just before it.
#[derive(Debug, Serialize)]
struct ServiceRow {
    /// `service`, or `baseline` (the service with `--baseline` flags).
    variant: &'static str,
    per_request: usize,
    concurrency: usize,
    requests: usize,
    seconds: f64,
    errors: usize,
    error_samples: Vec<String>,
    per_s: f64,
    raw_per_s: f64,
    of_raw: f64,
    p50_ms: f64,
    p99_ms: f64,
    raw_cpu_ms_per_input: Option<f64>,
    service_cpu_ms_per_input: Option<f64>,
    client_cpu_ms_per_input: Option<f64>,
    mean_batch: Option<f64>,
    /// The mean share of padding in the model calls' tokens (ONNX text models).
    padded_share: Option<f64>,
    /// The service's resident memory at the end of the phase.
    service_rss_mib: Option<f64>,
}

/// Every service row: each request size at each concurrency, the raw model just before each;
/// with a baseline, the baseline and the service after the same raw loop, their order
/// alternating from row to row.
async fn service_rows(
    args: &EncoderArgs,
    service: &Launched,
    baseline: Option<&Launched>,
    model: &Arc<dyn Model>,
    workload: &Arc<Workload>,
    raw_batch: usize,
) -> anyhow::Result<Vec<ServiceRow>> {
    let client = load::http_client();
    let duration = Duration::from_secs(args.duration_secs);
    let mut rows = Vec::new();
    let mut turn = 0usize;
    for &per_request in &args.per_request {
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
            let mut variants = vec![("service", service)];
            if let Some(b) = baseline {
                variants.push(("baseline", b));
                if turn % 2 == 1 {
                    variants.reverse();
                }
            }
            turn += 1;
            for (variant, launched) in variants {
                let shape = Shape {
                    per_request,
                    concurrency: c,
                    duration,
                };
                let mut row = service_row(&client, launched, workload, &raw, shape).await?;
                row.variant = variant;
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The size of a phase: inputs per request, concurrent callers, how long.
#[derive(Clone, Copy)]
struct Shape {
    per_request: usize,
    concurrency: usize,
    duration: Duration,
}

/// One phase against `service`, measured as a row.
async fn service_row(
    client: &load::HttpClient,
    service: &Launched,
    workload: &Arc<Workload>,
    raw: &Raw,
    shape: Shape,
) -> anyhow::Result<ServiceRow> {
    let Shape {
        per_request,
        concurrency: c,
        duration,
    } = shape;
    let unit = workload.unit();
    let url = format!("{}/encode", service.base);
    let cpu_before = (
        service.pid().and_then(procstat::cpu_seconds),
        procstat::own_cpu_seconds(),
    );
    let before = counters(client, &service.base).await;
    // One request of the size first: the model's first calls at a new batch size are slow.
    let mut config = LoadConfig::new(c, usize::MAX, duration);
    config.warmup = 1;
    let m = phase(client, &url, workload, per_request, &config).await;
    if let Some(f) = &m.warmup_failure {
        anyhow::bail!("warm-up: {}: {}", f.kind, f.message);
    }
    let after = counters(client, &service.base).await;
    let mean = |of: fn(&Counters) -> Option<(f64, f64)>| {
        let ((sum, n), (sum0, n0)) = (of(after.as_ref()?)?, of(before.as_ref()?)?);
        (n > n0).then(|| (sum - sum0) / (n - n0))
    };
    let inputs = (m.requests() * per_request) as f64;
    let cpu_ms = |before: Option<f64>, after: Option<f64>| Some((after? - before?) * 1e3 / inputs);
    let cpu = ServiceCpu {
        service_ms: cpu_ms(cpu_before.0, service.pid().and_then(procstat::cpu_seconds)),
        client_ms: cpu_ms(cpu_before.1, procstat::own_cpu_seconds()),
        mean_batch: mean(|c| c.batch),
    };
    let mut row = row(per_request, c, raw, &cpu, &m);
    row.padded_share = mean(|c| c.padded);
    row.service_rss_mib = service
        .pid()
        .and_then(procstat::rss_bytes)
        .map(|b| b as f64 / f64::from(1 << 20));
    eprintln!(
        "{per_request} {unit}/request, concurrency {c}: {:.1} {unit}/s, raw {:.1} ({:.0}%); CPU ms/{unit}: raw {:.2}, service {:.2}, client {:.2}; mean batch {:.1}; padding {:.0}%; errors {}",
        row.per_s,
        raw.per_s,
        100.0 * row.of_raw,
        raw.cpu_ms.unwrap_or(f64::NAN),
        cpu.service_ms.unwrap_or(f64::NAN),
        cpu.client_ms.unwrap_or(f64::NAN),
        cpu.mean_batch.unwrap_or(f64::NAN),
        100.0 * row.padded_share.unwrap_or(f64::NAN),
        row.errors
    );
    Ok(row)
}

/// One service phase: `POST /encode` of `per_request` inputs, each answer checked.
async fn phase(
    client: &load::HttpClient,
    url: &str,
    workload: &Arc<Workload>,
    per_request: usize,
    config: &LoadConfig,
) -> Measured {
    let (client, url, workload) = (client.clone(), url.to_owned(), workload.clone());
    load::run(config, move |i| {
        let (client, url, body) = (client.clone(), url.clone(), workload.body(i, per_request));
        async move {
            let answer = load::post_ok(&client, &url, body, load::NO_LIMIT).await?;
            check(&answer.body, per_request)?;
            Ok(Done::documents(per_request))
        }
    })
    .await
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

/// Sums and counts of the service's summaries so far, from its `/metrics`.
struct Counters {
    /// Inputs per model call.
    batch: Option<(f64, f64)>,
    /// The padded share of each model call's tokens.
    padded: Option<(f64, f64)>,
}

async fn counters(client: &load::HttpClient, base: &str) -> Option<Counters> {
    let answer = load::get(client, &format!("{base}/metrics")).await.ok()?;
    let text = String::from_utf8_lossy(&answer.body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    let pair = |name: &str| {
        Some((
            value(&format!("{name}_sum "))?,
            value(&format!("{name}_count "))?,
        ))
    };
    Some(Counters {
        batch: pair("flowmesh_encoder_batch_size"),
        padded: pair("flowmesh_encoder_padded_token_share"),
    })
}

/// One row of results: the service's phase `m` against the raw loop's `raw`.
fn row(
    per_request: usize,
    concurrency: usize,
    raw: &Raw,
    cpu: &ServiceCpu,
    m: &Measured,
) -> ServiceRow {
    let per_s = (m.requests() * per_request) as f64 / m.seconds();
    ServiceRow {
        variant: "service",
        per_request,
        concurrency,
        requests: m.requests(),
        seconds: m.elapsed.as_secs_f64(),
        errors: m.error_count(),
        error_samples: m.error_samples(),
        per_s,
        raw_per_s: raw.per_s,
        of_raw: per_s / raw.per_s,
        p50_ms: m.latency_ms(0.5),
        p99_ms: m.latency_ms(0.99),
        raw_cpu_ms_per_input: raw.cpu_ms,
        service_cpu_ms_per_input: cpu.service_ms,
        client_cpu_ms_per_input: cpu.client_ms,
        mean_batch: cpu.mean_batch,
        padded_share: None,
        service_rss_mib: None,
    }
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
            Workload::Texts { texts, .. } => {
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
    let cpu_before = procstat::own_cpu_seconds();
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < duration {
        call(done)?;
        done += batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_ms = procstat::own_cpu_seconds()
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
fn check(body: &[u8], n: usize) -> Result<(), Failure> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| Failure::new("bad_json", e.to_string()))?;
    let wrong = |m: String| Failure::new("wrong_embeddings", m);
    if a.embeddings.len() != n {
        return Err(wrong(format!(
            "{} embeddings for {n} inputs",
            a.embeddings.len()
        )));
    }
    if let Some(e) = a.embeddings.iter().find(|e| e.len() != a.dim) {
        return Err(wrong(format!(
            "an embedding of {} values, dim {}",
            e.len(),
            a.dim
        )));
    }
    Ok(())
}

fn table(result: &EncoderResult) -> String {
    let unit = result.unit;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
    let right = |name: String| (name, Align::Right);
    let mut t = Table::new([
        ("variant".into(), Align::Left),
        right(format!("{unit}/request")),
        right("concurrency".into()),
        right(format!("{unit}/s")),
        right(format!("raw {unit}/s")),
        right("of raw".into()),
        right("p50 ms".into()),
        right("p99 ms".into()),
        right("CPU raw".into()),
        right("CPU service".into()),
        right("CPU client".into()),
        right("mean batch".into()),
        right("padding".into()),
        right("errors".into()),
    ]);
    for r in &result.service {
        t.row(vec![
            r.variant.to_owned(),
            r.per_request.to_string(),
            r.concurrency.to_string(),
            format!("{:.1}", r.per_s),
            format!("{:.1}", r.raw_per_s),
            format!("{:.0}%", 100.0 * r.of_raw),
            format!("{:.1}", r.p50_ms),
            format!("{:.1}", r.p99_ms),
            ms(r.raw_cpu_ms_per_input),
            ms(r.service_cpu_ms_per_input),
            ms(r.client_cpu_ms_per_input),
            opt(r.mean_batch, 1),
            r.padded_share
                .map_or_else(|| "-".to_owned(), |p| format!("{:.0}%", 100.0 * p)),
            r.errors.to_string(),
        ]);
    }
    let ratios = ratios(result);
    format!(
        "raw model: batches of {}, measured just before each row; CPU: ms per {} of the raw loop, the service and the load generator\n\n{}{ratios}",
        result.raw_batch,
        unit.trim_end_matches('s'),
        t.render()
    )
}

/// With a baseline: the service against it, row by row (throughput, and CPU per input).
fn ratios(result: &EncoderResult) -> String {
    let mut lines = Vec::new();
    for r in result.service.iter().filter(|r| r.variant == "service") {
        let Some(b) = result.service.iter().find(|b| {
            b.variant == "baseline"
                && b.per_request == r.per_request
                && b.concurrency == r.concurrency
        }) else {
            continue;
        };
        let cpu = r
            .service_cpu_ms_per_input
            .zip(b.service_cpu_ms_per_input)
            .map_or_else(|| "-".to_owned(), |(s, b)| format!("{:.2}", s / b));
        lines.push(format!(
            "- {} {}/request, concurrency {}: {:.2}x the baseline's {}/s, CPU per input {cpu}x",
            r.per_request,
            result.unit,
            r.concurrency,
            r.per_s / b.per_s,
            result.unit
        ));
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n\nservice against the baseline ({}):\n{}",
            result.baseline_flags.join(" "),
            lines.join("\n")
        )
    }
}
