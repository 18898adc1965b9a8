//! `flowmesh-bench compare`: the same workloads and topology on flowmesh and on Jina 3.34 on
//! this machine, one after the other, with flowmesh/Jina ratios; and the raw ONNX Runtime
//! throughput of the text model on the same cores.
//!
//! Workloads (`--workload`, all by default):
//!
//! - `overhead`: flows/overhead.yml (hash encoder x2 replicas -> flat indexer x2 shards, `all`
//!   polling + top-k merge -> ranker) against the same topology of trivial Python executors on
//!   Jina; index `--docs` short texts, then single-document searches at each `--concurrency`.
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

mod procs;
mod python;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser as _;
use serde_json::{json, Value};

use crate::launch::Launched;
use crate::load;
use crate::workload::{sentence, Workload};
use python::{JinaFlow, Topology};
use report::{Row, Side};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum WorkloadKind {
    /// Trivial executors: the mesh's own cost per request.
    Overhead,
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

#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// Workloads to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "overhead,search,index"
    )]
    workload: Vec<WorkloadKind>,
    /// Which side runs first in each workload (alternate it between runs to interleave).
    #[arg(long, value_enum, default_value = "flowmesh-first")]
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
    model_config: Option<PathBuf>,
    /// The Python of a venv with Jina 3.34 (and onnxruntime, tokenizers); default: the one
    /// `scripts/jina-venv.sh` makes or finds.
    #[arg(long, env = "FLOWMESH_JINA_PYTHON")]
    jina_python: Option<PathBuf>,
    /// The folder of the Jina side's Python files.
    #[arg(long, default_value_os_t = python::repo().join("loadtests/jina"))]
    jina_dir: PathBuf,
    /// Where to write compare.json, compare.md and the Jina Flows' logs.
    #[arg(long)]
    out: Option<PathBuf>,
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
    let mut extras = serde_json::Map::new();
    for kind in kinds {
        eprintln!("== workload {kind:?}");
        match kind {
            WorkloadKind::Overhead => rows.extend(overhead(&args, &ctx).await?),
            WorkloadKind::Search => {
                let (r, check) = search(&args, &ctx).await?;
                rows.extend(r);
                extras.insert("embedding_check".into(), check);
            }
            WorkloadKind::Index => {
                let (r, raw) = index(&args, &ctx).await?;
                rows.extend(r);
                extras.insert("raw_onnx".into(), raw);
            }
        }
    }
    let refused = python::refusals(&guard_log);
    let result = report::result(&args, &rows, extras, &refused);
    let table = report::table(&rows);
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
    let errors: usize = rows.iter().map(|r| r.flowmesh.errors + r.jina.errors).sum();
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

async fn start(
    flowmesh: bool,
    flow: &Path,
    topology: &Topology<'_>,
    ctx: &Ctx,
    name: &str,
) -> anyhow::Result<Running> {
    if flowmesh {
        eprintln!("starting flowmesh: {}", flow.display());
        return Ok(Running::Flowmesh(Launched::flow(flow).await?));
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
            &log,
            &ctx.guard_log,
        )
        .await?,
    ))
}

/// What a load phase sends where, and its bounds.
struct Phase<'a> {
    endpoint: &'a str,
    concurrency: usize,
    max_requests: usize,
    duration: Duration,
}

/// One measured phase of one side: the load generator's figures and the CPU of every process.
async fn measure<M, C>(
    running: &Running,
    client: &load::HttpClient,
    phase: Phase<'_>,
    make: M,
    check: C,
) -> (load::Measured, BTreeMap<String, f64>)
where
    M: Fn(usize) -> Bytes + Send + Sync + 'static,
    C: Fn(&[u8]) -> Result<(), String> + Send + Sync + 'static,
{
    let root = running.pid().unwrap_or(0);
    let before = procs::tree(root);
    let own_before = crate::cpu::own_seconds();
    let url = format!("{}/{}", running.base(), phase.endpoint);
    let m = load::run(
        client,
        &url,
        phase.concurrency,
        phase.max_requests,
        phase.duration,
        make,
        check,
    )
    .await;
    let mut cpu = procs::spent(&before, &procs::tree(root));
    if let (Some(a), Some(b)) = (crate::cpu::own_seconds(), own_before) {
        cpu.insert("load generator".into(), a - b);
    }
    (m, cpu)
}

fn search_body(id: usize, text: &str, top_k: usize) -> Bytes {
    Bytes::from(
        json!({"data": [{"id": format!("q-{id}"), "text": text}], "parameters": {"top_k": top_k}})
            .to_string(),
    )
}

fn index_body(docs: &[(String, String)]) -> Bytes {
    let data: Vec<Value> = docs
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}))
        .collect();
    Bytes::from(json!({"data": data, "parameters": {}}).to_string())
}

/// An index answer of a request of documents `doc-{b * size}` onwards (ids as [`index_body`]
/// gets them) must hold every one of them: as many as the request had, the first one first.
fn check_index_answer(body: &[u8], size: usize, total: usize) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let data = v["data"].as_array().ok_or("no data")?;
    let first = data
        .first()
        .and_then(|d| {
            d["id"]
                .as_str()?
                .strip_prefix("doc-")?
                .parse::<usize>()
                .ok()
        })
        .ok_or("no document back")?;
    if first % size != 0 || first >= total {
        return Err(format!(
            "first document back is doc-{first}, not a request's first"
        ));
    }
    let want = size.min(total - first);
    if data.len() == want {
        Ok(())
    } else {
        Err(format!("{} documents back for {want} sent", data.len()))
    }
}

/// Indexes `docs` (id, text) in requests of `size` from `concurrency` clients; bounded by
/// `duration` when given.
async fn index_docs(
    running: &Running,
    client: &load::HttpClient,
    docs: Arc<Vec<(String, String)>>,
    size: usize,
    concurrency: usize,
    duration: Duration,
) -> (load::Measured, BTreeMap<String, f64>) {
    let batches = docs.len().div_ceil(size);
    let d = docs.clone();
    measure(
        running,
        client,
        Phase {
            endpoint: "index",
            concurrency,
            max_requests: batches,
            duration,
        },
        move |b| index_body(&d[b * size..((b + 1) * size).min(d.len())]),
        move |body| check_index_answer(body, size, docs.len()),
    )
    .await
}

/// Documents indexed by the successful requests of an index phase of `total` documents in
/// requests of `size` (requests go out in order, so only the last one can be short).
fn docs_done(m: &load::Measured, size: usize, total: usize) -> f64 {
    (m.latencies.len() * size).min(total) as f64
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
    let docs: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.docs)
            .map(|i| (format!("doc-{i}"), crate::text(i)))
            .collect(),
    );
    let client = load::http_client();
    let duration = Duration::from_secs(args.duration_secs);
    let mut rows: Vec<Row> = args
        .concurrency
        .iter()
        .map(|&c| Row::new("overhead", c, "requests/s", Some(50.0)))
        .collect();
    let mut index_rows = Row::new("overhead: index", 4, "docs/s", None);
    for flowmesh in sides(args.order) {
        let running = start(flowmesh, &args.overhead_flow, &topology, ctx, "overhead").await?;
        let (m, cpu) = index_docs(
            &running,
            &client,
            docs.clone(),
            100,
            4,
            Duration::from_secs(3600),
        )
        .await;
        *index_rows.side(flowmesh) = Side::from_measured(&m, docs_done(&m, 100, docs.len()), &cpu);
        eprintln!("  index: {}", index_rows.side(flowmesh).summary());
        for (row, &c) in rows.iter_mut().zip(&args.concurrency) {
            let top_k = args.top_k;
            let (m, cpu) = measure(
                &running,
                &client,
                Phase {
                    endpoint: "search",
                    concurrency: c,
                    max_requests: args.requests,
                    duration,
                },
                move |i| search_body(i, &crate::text(1_000_003 + i), top_k),
                move |body| crate::check_matches(body, top_k),
            )
            .await;
            *row.side(flowmesh) = Side::from_measured(&m, m.latencies.len() as f64, &cpu);
            eprintln!("  search c={c}: {}", row.side(flowmesh).summary());
        }
        running.stop().await;
    }
    rows.insert(0, index_rows);
    Ok(rows)
}

/// Texts for the embedding check: short, long (truncated at the model's 256 tokens), cased,
/// punctuated, non-ASCII.
fn check_texts() -> Vec<String> {
    let long = (0..400).map(sentence).collect::<Vec<_>>().join(" ");
    vec![
        "A quick check.".to_owned(),
        sentence(7),
        "Neural search in Rust: fast, small, and easy to deploy!".to_owned(),
        "Crème brûlée – 3 × naïve café façades… ok?".to_owned(),
        long,
    ]
}

/// Cosine similarity of the Jina encoder's embeddings with flowmesh-encoder's `/encode`, per
/// text; fails below 1 - 1e-5.
async fn embedding_check(ctx: &Ctx) -> anyhow::Result<Value> {
    let texts = check_texts();
    let flags: Vec<String> = [
        "--model",
        "onnx",
        "--threads",
        "1",
        "--model-config",
        &ctx.model_config.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let service = Launched::service("flowmesh-encoder", &flags).await?;
    let client = load::http_client();
    let answer = load::post(
        &client,
        &format!("{}/encode", service.base),
        Bytes::from(json!({ "texts": texts }).to_string()),
    )
    .await;
    service.stop().await;
    let answer = answer?;
    anyhow::ensure!(
        answer.status == 200,
        "flowmesh-encoder /encode: status {}",
        answer.status
    );
    let ours: Vec<Vec<f32>> = serde_json::from_value(
        serde_json::from_slice::<Value>(&answer.body)?["embeddings"].take(),
    )?;
    let theirs = python::embed(
        &ctx.python,
        &ctx.jina_dir,
        &ctx.model_config,
        &texts,
        &ctx.guard_log,
    )
    .await?;
    anyhow::ensure!(
        ours.len() == texts.len() && theirs.len() == texts.len(),
        "embedding check: {} and {} embeddings for {} texts",
        ours.len(),
        theirs.len(),
        texts.len()
    );
    let mut cosines = Vec::new();
    let mut max_abs = 0.0_f64;
    for (a, b) in ours.iter().zip(&theirs) {
        anyhow::ensure!(a.len() == b.len(), "dimensions {} and {}", a.len(), b.len());
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        cosines.push(dot / (na * nb));
        for (x, y) in a.iter().zip(b) {
            max_abs = max_abs.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("embedding check: min cosine {min:.8}, max |difference| {max_abs:.2e}");
    anyhow::ensure!(
        min >= 1.0 - 1e-5,
        "the Jina encoder's embeddings differ from flowmesh's: cosines {cosines:?}"
    );
    Ok(
        json!({"texts": texts.len(), "cosines": cosines, "min_cosine": min, "max_abs_difference": max_abs}),
    )
}

async fn search(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<(Vec<Row>, Value)> {
    let check = embedding_check(ctx).await?;
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
    let duration = Duration::from_secs(args.duration_secs);
    let c = args.search_concurrency;
    let mut index_row = Row::new("search: index", 4, "docs/s", None);
    let mut row = Row::new("search", c, "requests/s", Some(3.0));
    for flowmesh in sides(args.order) {
        let running = start(flowmesh, &args.text_flow, &topology, ctx, "text").await?;
        let (m, cpu) = index_docs(
            &running,
            &client,
            docs.clone(),
            args.request_size,
            4,
            Duration::from_secs(3600),
        )
        .await;
        *index_row.side(flowmesh) =
            Side::from_measured(&m, docs_done(&m, args.request_size, docs.len()), &cpu);
        eprintln!("  index: {}", index_row.side(flowmesh).summary());
        let top_k = args.top_k;
        let (m, cpu) = measure(
            &running,
            &client,
            Phase {
                endpoint: "search",
                concurrency: c,
                max_requests: args.requests,
                duration,
            },
            move |i| search_body(i, &format!("{}.", sentence(1_000_003 + i)), top_k),
            move |body| crate::check_matches(body, top_k),
        )
        .await;
        *row.side(flowmesh) = Side::from_measured(&m, m.latencies.len() as f64, &cpu);
        eprintln!("  search c={c}: {}", row.side(flowmesh).summary());
        running.stop().await;
    }
    Ok((vec![index_row, row], check))
}

/// The raw model on `sentences`: one model per encoder replica, each on its own thread with
/// the replica's intra-op threads, batches of [`MAX_BATCH`] back to back; sentences/s.
async fn raw_onnx(
    ctx: &Ctx,
    sentences: &Arc<Workload>,
    duration: Duration,
) -> anyhow::Result<(f64, Option<f64>)> {
    let config = flowmesh_encoder::Config::try_parse_from([
        "flowmesh-encoder",
        "--model",
        "onnx",
        "--threads",
        &TEXT_THREADS.to_string(),
        "--model-config",
        &ctx.model_config.to_string_lossy(),
    ])?;
    let mut tasks = Vec::new();
    for _ in 0..REPLICAS {
        let model = config.model()?;
        let sentences = sentences.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            crate::encoder::raw_throughput(model.as_ref(), &sentences, MAX_BATCH, duration)
        }));
    }
    let mut per_s = 0.0;
    let mut cpu = Vec::new();
    for t in tasks {
        let raw = t.await??;
        per_s += raw.per_s;
        cpu.extend(raw.cpu_ms);
    }
    // Each loop's CPU figure is the whole process's: both loops' time, over one loop's inputs.
    let cpu_ms =
        (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64 / REPLICAS as f64);
    Ok((per_s, cpu_ms))
}

async fn index(args: &CompareArgs, ctx: &Ctx) -> anyhow::Result<(Vec<Row>, Value)> {
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
    let sentences = Arc::new(Workload::Texts {
        texts: (0..args.index_docs * spd).map(sentence).collect(),
    });
    let client = load::http_client();
    let duration = Duration::from_secs(args.duration_secs);
    let c = args.index_concurrency;
    let mut row = Row::new("index", c, "docs/s", None);
    let mut raw_figures = serde_json::Map::new();
    for flowmesh in sides(args.order) {
        // The raw model just before each side (nothing else running), against the drift of a
        // shared machine.
        let (raw, raw_cpu) = raw_onnx(ctx, &sentences, duration).await?;
        let raw_docs = raw / spd as f64;
        eprintln!(
            "  raw ONNX Runtime ({REPLICAS} x {TEXT_THREADS} thread, batches of {MAX_BATCH}): {raw:.1} sentences/s = {raw_docs:.1} docs/s"
        );
        raw_figures.insert(
            if flowmesh {
                "before_flowmesh"
            } else {
                "before_jina"
            }
            .into(),
            json!({"sentences_per_s": raw, "docs_per_s": raw_docs, "cpu_ms_per_sentence": raw_cpu}),
        );
        let running = start(flowmesh, &args.text_flow, &topology, ctx, "text").await?;
        let (m, cpu) = index_docs(
            &running,
            &client,
            docs.clone(),
            args.request_size,
            c,
            duration,
        )
        .await;
        let side = row.side(flowmesh);
        *side = Side::from_measured(&m, docs_done(&m, args.request_size, docs.len()), &cpu);
        side.raw_per_s = Some(raw_docs);
        eprintln!("  index c={c}: {}", side.summary());
        running.stop().await;
    }
    let raw = json!({
        "replicas": REPLICAS,
        "threads_per_replica": TEXT_THREADS,
        "batch": MAX_BATCH,
        "sentences_per_doc": spd,
        "runs": raw_figures,
    });
    Ok((vec![row], raw))
}
