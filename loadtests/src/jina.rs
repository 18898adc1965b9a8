//! `flowmesh-bench compare`: the same workloads and topology on flowmesh and on Jina 3.34 on
//! this machine, one after the other, with flowmesh/Jina ratios; and the raw ONNX Runtime
//! throughput of the text model on the same cores.
//!
//! Workloads (`--workload`, all by default):
//!
//! - `overhead`: flows/overhead.yml (hash encoder x2 replicas -> flat indexer x2 shards, `all`
//!   polling + top-k merge -> ranker) against the same topology of trivial Python executors on
//!   Jina; index `--docs` short texts, then single-document searches at each `--concurrency`.
//! - `grpc`: the overhead topology, each side's gateway serving Jina's gRPC protocol beside HTTP
//!   (flowmesh's `--grpc-listen`, Jina's `protocol=['http', 'grpc']`); index `--docs` short
//!   texts over HTTP, then at each `--concurrency` single-document searches over gRPC
//!   (`process_single_data`, as Jina's client with `stream=False`) and over HTTP on the same
//!   Flow, in alternating order: flowmesh's gRPC against Jina's, and each side's gRPC against
//!   its own HTTP.
//! - `search`: flows/text.yml (sentencizer -> MiniLM x2 replicas, one ONNX Runtime thread each
//!   -> indexer x2 shards -> ranker) against Jina with the same model file, tokenizer and
//!   topology; index `--search-docs` one-sentence documents, then single-document searches at
//!   `--search-concurrency`.
//! - `index`: the same text Flows indexing `--index-docs` documents of `--sentences-per-doc`
//!   sentences, `--request-size` documents a request from `--index-concurrency` clients; and the
//!   raw model on the same sentences (one model per encoder replica, one thread each, batches of
//!   64 as the encoders make), in documents/s.
//!
//! Both sides are driven by the same closed-loop load generator with the same request bodies:
//! `POST {gateway}/index` and `/search` with `{"data": [...], "parameters": {...}}` (the routes
//! of Jina's HTTP gateway with docarray v2, which has no `/post`; flowmesh serves both). Every
//! answer is validated on both sides: a search answer must hold exactly `top_k` matches per
//! query, an index answer one document per document sent; anything else counts as an error.
//! One side runs at a time; CPU time of each side's processes comes from `/proc`.

mod grpc;
mod model;
mod python;
mod report;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::launch::Launched;
use crate::load::{self, HttpClient, LoadConfig, Measured};
use crate::texts::sentence;
use crate::workload::Workload;
use crate::{procstat, short};
use model::{EmbeddingCheck, RawOnnx, RawRun};
use python::{JinaFlow, Topology};
use report::{Row, Side};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum WorkloadKind {
    /// Trivial executors: the mesh's own cost per request.
    Overhead,
    /// Trivial executors, searched over gRPC and over HTTP on the same Flow.
    Grpc,
    /// Text search with the real model.
    Search,
    /// Indexing with the real model, against the raw model.
    Index,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Order {
    /// flowmesh's phases first, then Jina's.
    FlowmeshFirst,
    /// Jina's phases first, then flowmesh's.
    JinaFirst,
}

/// The settings of `flowmesh-bench compare`; the JSON reports those that shape the figures.
#[derive(Debug, clap::Args, serde::Serialize)]
pub(crate) struct CompareArgs {
    /// Workloads to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "overhead,grpc,search,index"
    )]
    #[serde(skip)]
    workload: Vec<WorkloadKind>,
    /// Which side runs first in each workload (alternate it between runs to interleave).
    #[arg(long, value_enum, default_value = "flowmesh-first")]
    #[serde(serialize_with = "debug")]
    order: Order,
    /// overhead: documents indexed before searching.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// overhead: concurrencies of the search phases, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// search: one-sentence documents indexed before searching.
    #[arg(long, default_value_t = 1_000)]
    search_docs: usize,
    /// search: concurrency of the search phase.
    #[arg(long, default_value_t = 16)]
    search_concurrency: usize,
    /// index: documents to index (each phase ends earlier at `--duration-secs`).
    #[arg(long, default_value_t = 2_000)]
    index_docs: usize,
    /// index: sentences per document.
    #[arg(long, default_value_t = 3)]
    sentences_per_doc: usize,
    /// index: documents per request.
    #[arg(long, default_value_t = 50)]
    request_size: usize,
    /// index: concurrent clients.
    #[arg(long, default_value_t = 4)]
    index_concurrency: usize,
    /// Longest duration of each measured phase (and of the raw model's loop), in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Most requests of each search phase.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Matches per query; every answer must have exactly this many.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// flowmesh's Flow of the overhead workload (its encoder's `dim` is used on Jina too).
    #[arg(long, default_value = "flows/overhead.yml")]
    overhead_flow: PathBuf,
    /// flowmesh's Flow of the search and index workloads.
    #[arg(long, default_value = "flows/text.yml")]
    text_flow: PathBuf,
    /// The text model's config (`models/prepare.sh` writes it); default
    /// `$FLOWMESH_CACHE/models/minilm/config.json`.
    #[arg(long)]
    #[serde(skip)]
    model_config: Option<PathBuf>,
    /// The Python of a venv with Jina 3.34 (and onnxruntime, tokenizers); default: the one
    /// `scripts/jina-venv.sh` makes or finds.
    #[arg(long, env = "FLOWMESH_JINA_PYTHON")]
    #[serde(skip)]
    jina_python: Option<PathBuf>,
    /// The folder of the Jina side's Python files.
    #[arg(long, default_value_os_t = python::repo().join("loadtests/jina"))]
    #[serde(skip)]
    jina_dir: PathBuf,
    /// Where to write compare.json, compare.md and the Jina Flows' logs.
    #[arg(long)]
    #[serde(skip)]
    out: Option<PathBuf>,
}

/// `value` as `{:?}` writes it.
fn debug<S: serde::Serializer>(value: &impl std::fmt::Debug, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:?}"))
}

/// Encoder replicas and indexer shards of both Flows (flows/*.yml and the Jina runner).
const REPLICAS: usize = 2;
const SHARDS: usize = 2;
/// The text encoder's ONNX Runtime intra-op threads per replica (flows/text.yml).
const TEXT_THREADS: usize = 1;
/// The most texts of one model call, flowmesh-encoder's `--max-batch` default and the Jina
/// encoder's.
const MAX_BATCH: usize = 64;

/// What one side needs to run a workload.
struct Ctx {
    python: PathBuf,
    jina_dir: PathBuf,
    logs: PathBuf,
    guard_log: PathBuf,
    model_config: PathBuf,
}

pub(crate) async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let python = python::python(args.jina_python.as_deref()).await?;
    let logs = match &args.out {
        Some(out) => out.clone(),
        None => std::env::temp_dir().join(format!("flowmesh-compare-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs)?;
    let guard_log = logs.join("jina-network-guard.log");
    let _ = std::fs::remove_file(&guard_log);
    let model_config = args
        .model_config
        .clone()
        .unwrap_or_else(|| flowmesh_encoder::models_dir().join("minilm/config.json"));
    let ctx = Ctx {
        python,
        jina_dir: args.jina_dir.clone(),
        logs: logs.clone(),
        guard_log: guard_log.clone(),
        model_config,
    };
    let mut kinds = args.workload.clone();
    kinds.sort();
    kinds.dedup();
    let mut rows: Vec<Row> = Vec::new();
    let mut extras = report::Extras::default();
    for kind in kinds {
        eprintln!("== workload {kind:?}");
        match kind {
            WorkloadKind::Overhead => rows.extend(overhead(&args, &ctx).await?),
            WorkloadKind::Grpc => rows.extend(grpc_rows(&args, &ctx).await?),
            WorkloadKind::Search => {
                let (r, check) = search(&args, &ctx).await?;
                rows.extend(r);
                extras.embedding_check = Some(check);
            }
            WorkloadKind::Index => {
                let (r, raw) = index(&args, &ctx).await?;
                rows.extend(r);
                extras.raw_onnx = Some(raw);
            }
        }
    }
    for row in &mut rows {
        row.finish();
    }
    let refused = python::refusals(&guard_log);
    let result = report::result(&args, &rows, extras, &refused);
    let mut table = report::table(&rows);
    if let Some(protocols) = report::protocol_table(&rows) {
        table = format!("{table}\n{protocols}");
    }
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(
            out.join("compare.json"),
            serde_json::to_string_pretty(&result)?,
        )?;
        std::fs::write(out.join("compare.md"), &table)?;
        eprintln!("wrote {}/compare.json and compare.md", out.display());
    }
    anyhow::ensure!(
        refused.is_empty(),
        "the network guard refused {} non-loopback attempt(s) on the Jina side: {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    let errors: usize = rows
        .iter()
        .map(|r| r.sides.flowmesh.load.errors + r.sides.jina.load.errors)
        .sum();
    anyhow::ensure!(
        errors == 0,
        "{errors} requests failed or were wrong (see the table)"
    );
    Ok(())
}

/// A started side: flowmesh's `flowmesh up` or a Jina Flow.
enum Running {
    Flowmesh(Launched),
    Jina(JinaFlow),
}

impl Running {
    fn base(&self) -> &str {
        match self {
            Self::Flowmesh(l) => &l.base,
            Self::Jina(j) => &j.base,
        }
    }

    /// Its gateway's gRPC address, when started with one.
    fn grpc(&self) -> Option<&str> {
        match self {
            Self::Flowmesh(l) => l.grpc.as_deref(),
            Self::Jina(j) => j.grpc.as_deref(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Flowmesh(l) => l.pid(),
            Self::Jina(j) => j.pid(),
        }
    }

    async fn stop(self) {
        match self {
            Self::Flowmesh(l) => l.stop().await,
            Self::Jina(j) => j.stop().await,
        }
    }
}

/// The two sides in the order asked for: `true` is flowmesh.
fn sides(order: Order) -> [bool; 2] {
    match order {
        Order::FlowmeshFirst => [true, false],
        Order::JinaFirst => [false, true],
    }
}

/// Starts one side, its gateway serving gRPC beside HTTP when `grpc`.
async fn start(
    flowmesh: bool,
    flow: &Path,
    topology: &Topology<'_>,
    ctx: &Ctx,
    name: &str,
    grpc: bool,
) -> anyhow::Result<Running> {
    if flowmesh {
        eprintln!("starting flowmesh: {}", flow.display());
        let launched = if grpc {
            Launched::flow_grpc(flow).await?
        } else {
            Launched::flow(flow).await?
        };
        return Ok(Running::Flowmesh(launched));
    }
    eprintln!("starting Jina 3.34 ({name}) ...");
    let log = ctx.logs.join(format!("jina-{name}.log"));
    Ok(Running::Jina(
        JinaFlow::start(
            &ctx.python,
            &ctx.jina_dir,
            topology,
            REPLICAS,
            SHARDS,
            grpc,
            &log,
            &ctx.guard_log,
        )
        .await?,
    ))
}

/// One measured phase of one side: what `phase` measured, and the CPU seconds of every process
/// of the side and of the load generator meanwhile.
async fn measure(
    running: &Running,
    phase: impl Future<Output = Measured>,
) -> (Measured, BTreeMap<String, f64>) {
    let root = running.pid().unwrap_or(0);
    let before = procstat::tree(root);
    let own_before = procstat::own_cpu_seconds();
    let m = phase.await;
    let mut cpu = procstat::spent(&before, &procstat::tree(root));
    if let (Some(a), Some(b)) = (procstat::own_cpu_seconds(), own_before) {
        cpu.insert("load generator".into(), a - b);
    }
    (m, cpu)
}

/// Indexes `docs` into a side in requests of `size` from `concurrency` clients, within
/// `duration`; the side of the row, in documents/s.
async fn index_side(
    running: &Running,
    client: &HttpClient,
    docs: &Arc<Vec<(String, String)>>,
    size: usize,
    concurrency: usize,
    duration: Duration,
) -> Side {
    let phase = short::index(
        client,
        running.base(),
        docs.clone(),
        size,
        concurrency,
        duration,
    );
    let (m, cpu) = measure(running, phase).await;
    Side::from_measured(&m, m.documents as f64, &cpu)
}

/// Searches a side from `concurrency` clients, query `i` being `query(i)`; the side of the row,
/// in requests/s.
async fn search_side(
    running: &Running,
    client: &HttpClient,
    args: &CompareArgs,
    concurrency: usize,
    query: fn(usize) -> String,
) -> Side {
    let config = LoadConfig::new(
        concurrency,
        args.requests,
        Duration::from_secs(args.duration_secs),
    );
    let phase = short::search(client, running.base(), &config, args.top_k, query);
    let (m, cpu) = measure(running, phase).await;
    Side::from_measured(&m, m.requests() as f64, &cpu)
}

/// The hash encoder's `dim` in a flowmesh Flow file (64 when absent).
fn hash_dim(flow: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(flow)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", flow.display()))?;
    Ok(text
        .lines()
        .find_map(|l| l.trim().strip_prefix("dim:")?.trim().parse().ok())
        .unwrap_or(64))
}

async fn overhead(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let dim = hash_dim(&args.overhead_flow)?;
    let topology = Topology::Overhead { dim };
    let docs = Arc::new(short::documents(args.docs));
    let client = load::http_client();
    let mut rows: Vec<Row> = args
        .concurrency
        .iter()
        .map(|&c| Row::new("overhead", c, "requests/s", Some(50.0)))
        .collect();
    let mut index_rows = Row::new("overhead: index", 4, "docs/s", None);
    for flowmesh in sides(args.order) {
        let running = start(
            flowmesh,
            &args.overhead_flow,
            &topology,
            ctx,
            "overhead",
            false,
        )
        .await?;
        let forever = Duration::from_secs(3600);
        *index_rows.side(flowmesh) = index_side(&running, &client, &docs, 100, 4, forever).await;
        eprintln!("  index: {}", index_rows.side(flowmesh).summary());
        for (row, &c) in rows.iter_mut().zip(&args.concurrency) {
            *row.side(flowmesh) = search_side(&running, &client, args, c, short::query_text).await;
            eprintln!("  search c={c}: {}", row.side(flowmesh).summary());
        }
        running.stop().await;
    }
    rows.insert(0, index_rows);
    Ok(rows)
}

/// Searches a side over gRPC from `concurrency` clients (a channel each), query `i` being
/// `query(i)`; the side of the row, in requests/s.
async fn grpc_search_side(
    running: &Running,
    args: &CompareArgs,
    concurrency: usize,
    query: fn(usize) -> String,
) -> anyhow::Result<Side> {
    let url = running
        .grpc()
        .ok_or_else(|| anyhow::anyhow!("the side was started without gRPC"))?;
    let clients = grpc::Clients::connect(url, concurrency).await?;
    let config = LoadConfig::new(
        concurrency,
        args.requests,
        Duration::from_secs(args.duration_secs),
    );
    let phase = grpc::search(&clients, &config, args.top_k, query);
    let (m, cpu) = measure(running, phase).await;
    Ok(Side::from_measured(&m, m.requests() as f64, &cpu))
}

/// The `grpc` workload: rows `grpc: search` (gRPC on both sides) and `grpc: HTTP, same Flow`
/// at each concurrency.
async fn grpc_rows(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let dim = hash_dim(&args.overhead_flow)?;
    let topology = Topology::Overhead { dim };
    let docs = Arc::new(short::documents(args.docs));
    let client = load::http_client();
    let new_rows = |name: &str| -> Vec<Row> {
        args.concurrency
            .iter()
            .map(|&c| Row::new(name, c, "requests/s", None))
            .collect()
    };
    let (mut over_grpc, mut over_http) = (new_rows(GRPC_ROW), new_rows(GRPC_HTTP_ROW));
    for flowmesh in sides(args.order) {
        let running = start(flowmesh, &args.overhead_flow, &topology, ctx, "grpc", true).await?;
        let forever = Duration::from_secs(3600);
        let indexed = index_side(&running, &client, &docs, 100, 4, forever).await;
        eprintln!("  index over HTTP: {}", indexed.summary());
        anyhow::ensure!(
            indexed.load.errors == 0,
            "indexing the grpc workload's documents failed: {}",
            indexed.summary()
        );
        for (k, &c) in args.concurrency.iter().enumerate() {
            // Alternating which protocol goes first, against the drift of a shared machine.
            for http in [k % 2 == 0, k % 2 == 1] {
                if http {
                    let side = search_side(&running, &client, args, c, short::query_text).await;
                    eprintln!("  HTTP search c={c}: {}", side.summary());
                    *over_http[k].side(flowmesh) = side;
                } else {
                    let side = grpc_search_side(&running, args, c, short::query_text).await?;
                    eprintln!("  gRPC search c={c}: {}", side.summary());
                    *over_grpc[k].side(flowmesh) = side;
                }
            }
        }
        running.stop().await;
    }
    over_grpc.extend(over_http);
    Ok(over_grpc)
}

/// The rows of the `grpc` workload: searches over gRPC, and over HTTP on the same Flows.
pub(crate) const GRPC_ROW: &str = "grpc: search";
pub(crate) const GRPC_HTTP_ROW: &str = "grpc: HTTP, same Flow";

/// `texts` sorted by length and cut into batches of `batch` (the raw loop's windows), the
/// batches in an order that spreads short and long ones evenly: the loop stops at its duration,
/// and any prefix of the batches must be like the whole (in plain sorted order it would time
/// only the shortest texts).
fn sorted_batches(texts: &[String], batch: usize) -> Vec<String> {
    let mut sorted = texts.to_vec();
    sorted.sort_by_key(String::len);
    // Whole batches only, so that the windows stay aligned; the remainder goes last.
    let batches: Vec<&[String]> = sorted.chunks_exact(batch.max(1)).collect();
    let rest = sorted.chunks_exact(batch.max(1)).remainder();
    let n = batches.len();
    // A stride coprime with n visits every batch once; near n / golden ratio, its first batches
    // already spread over the whole range of lengths.
    let stride = (n * 618 / 1000..).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    (0..n)
        .flat_map(|k| batches[(k * stride) % n].iter())
        .chain(rest)
        .cloned()
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Search query `i` of the search workload: one sentence unlike the indexed ones.
fn sentence_query(i: usize) -> String {
    format!("{}.", sentence(1_000_003 + i))
}

async fn search(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<(Vec<Row>, EmbeddingCheck)> {
    let check = model::embedding_check(ctx).await?;
    let topology = Topology::Text {
        model_config: &ctx.model_config,
        threads: TEXT_THREADS,
    };
    // One sentence a document: a query's top-k chunk matches then name top_k distinct
    // documents, so that the ranker's answer always has exactly top_k (both sides).
    let docs: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.search_docs)
            .map(|i| (format!("doc-{i}"), format!("{}.", sentence(i))))
            .collect(),
    );
    let client = load::http_client();
    let c = args.search_concurrency;
    let mut index_row = Row::new("search: index", 4, "docs/s", None);
    let mut row = Row::new("search", c, "requests/s", Some(3.0));
    for flowmesh in sides(args.order) {
        let running = start(flowmesh, &args.text_flow, &topology, ctx, "text", false).await?;
        let (size, forever) = (args.request_size, Duration::from_secs(3600));
        *index_row.side(flowmesh) = index_side(&running, &client, &docs, size, 4, forever).await;
        eprintln!("  index: {}", index_row.side(flowmesh).summary());
        *row.side(flowmesh) = search_side(&running, &client, args, c, sentence_query).await;
        eprintln!("  search c={c}: {}", row.side(flowmesh).summary());
        running.stop().await;
    }
    Ok((vec![index_row, row], check))
}

async fn index(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<(Vec<Row>, RawOnnx)> {
    let topology = Topology::Text {
        model_config: &ctx.model_config,
        threads: TEXT_THREADS,
    };
    let spd = args.sentences_per_doc.max(1);
    let docs: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.index_docs)
            .map(|i| {
                let text = (0..spd)
                    .map(|j| format!("{}.", sentence(i * spd + j)))
                    .collect::<Vec<_>>()
                    .join(" ");
                (format!("doc-{i}"), text)
            })
            .collect(),
    );
    // The raw loop embeds the same sentences, in the same order.
    let texts: Vec<String> = (0..args.index_docs * spd).map(sentence).collect();
    // And, once, sorted by length: batches of similar lengths back to back, with no other work,
    // are what any batching of these sentences can reach at most.
    let by_length = sorted_batches(&texts, MAX_BATCH);
    let sentences = Arc::new(Workload::Texts {
        texts,
        make: sentence,
    });
    let by_length = Arc::new(Workload::Texts {
        texts: by_length,
        make: sentence,
    });
    let mut sorted = None;
    let client = load::http_client();
    let duration = Duration::from_secs(args.duration_secs);
    let c = args.index_concurrency;
    let mut row = Row::new("index", c, "docs/s", None);
    let mut runs = BTreeMap::new();
    for flowmesh in sides(args.order) {
        // The raw model just before each side (nothing else running), against the drift of a
        // shared machine.
        let (raw, raw_cpu) = model::raw_onnx(ctx, &sentences, duration).await?;
        let raw_docs = raw / spd as f64;
        eprintln!(
            "  raw ONNX Runtime ({REPLICAS} x {TEXT_THREADS} thread, batches of {MAX_BATCH}): {raw:.1} sentences/s = {raw_docs:.1} docs/s"
        );
        let run = RawRun {
            sentences_per_s: raw,
            docs_per_s: raw_docs,
            cpu_ms_per_sentence: raw_cpu,
        };
        if sorted.is_none() {
            let (raw, cpu) = model::raw_onnx(ctx, &by_length, duration).await?;
            eprintln!(
                "  raw ONNX Runtime, sentences sorted by length: {raw:.1} sentences/s = {:.1} docs/s",
                raw / spd as f64
            );
            sorted = Some(RawRun {
                sentences_per_s: raw,
                docs_per_s: raw / spd as f64,
                cpu_ms_per_sentence: cpu,
            });
        }
        runs.insert(
            if flowmesh {
                "before_flowmesh"
            } else {
                "before_jina"
            },
            run,
        );
        let running = start(flowmesh, &args.text_flow, &topology, ctx, "text", false).await?;
        let side = row.side(flowmesh);
        *side = index_side(&running, &client, &docs, args.request_size, c, duration).await;
        side.set_raw(raw_docs);
        eprintln!("  index c={c}: {}", side.summary());
        running.stop().await;
    }
    let raw = RawOnnx {
        replicas: REPLICAS,
        threads_per_replica: TEXT_THREADS,
        batch: MAX_BATCH,
        sentences_per_doc: spd,
        runs,
        sorted_by_length: sorted,
    };
    Ok((vec![row], raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_batches_hold_every_text_once_and_mix_lengths_early() {
        let texts: Vec<String> = (0..6400).map(|i| "w ".repeat(1 + i % 97)).collect();
        let out = sorted_batches(&texts, 64);
        let (mut a, mut b) = (out.clone(), texts);
        a.sort();
        b.sort();
        assert_eq!(a, b, "a permutation of the texts");
        for batch in out.chunks(64) {
            let lens: Vec<usize> = batch.iter().map(String::len).collect();
            assert!(lens.windows(2).all(|w| w[0] <= w[1]), "each batch sorted");
        }
        // The first quarter is not only the shortest texts.
        let mean = |t: &[String]| t.iter().map(String::len).sum::<usize>() as f64 / t.len() as f64;
        let early = mean(&out[..out.len() / 4]);
        assert!(
            (early - mean(&out)).abs() < 0.2 * mean(&out),
            "{early} against {}",
            mean(&out)
        );
    }
}
