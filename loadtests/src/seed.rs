//! `flowmesh-bench run`: the seed's cloud benchmark. Index `--docs` generated documents (texts
//! through sentencizer, encoder, indexer shards and ranker; or images through encoder and
//! indexer shards), then query, from `--concurrency` closed-loop clients sending
//! `--request-size` documents a request, validating every answer, and report documents/s,
//! requests/s, latency percentiles and errors per phase (`results.json`, `results.md`, plots).
//!
//! Without `--gateway`, the Flows are started here with `flowmesh up`, in one workspace: an
//! index Flow (vectors stored, no approximate structure built), then, for each indexer of
//! `--indexers`, a query Flow of the same name whose shards open the same data with that
//! backend and build it once before queries start; recall@k is measured against the exact
//! (flat) answers to the same queries. With `--gateway`, a running Flow (compose, Ansible) is
//! measured as it is and the topology knobs are informational (`GET /status` tells the truth).
//!
//! For other engines (the Jina side-by-side), [`run_phases`] runs both phases against any
//! [`Target`] with a [`Workload`], and [`Report`] writes the same outputs.

mod flow;
mod phase;
mod plot;
mod progress;
mod report;
mod target;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

pub(crate) use flow::Store;
pub(crate) use phase::{recall, run_phase, Phase, PhaseOptions, PhaseResult};
pub(crate) use progress::Display;
pub(crate) use report::{Report, Row};
pub(crate) use target::{Operation, Protocol, Target};
pub(crate) use workload::{ImageField, ImageFormat, Scenario, Workload};

use crate::indexer::spec::BackendSpec;
use crate::launch::{Launched, TempDir};
use crate::load::{http_client, HttpClient, LoadConfig, NO_LIMIT};
use flow::{Build, Encoder, FlowPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IndexerKind {
    Flat,
    Annoy,
    Faiss,
}

/// The settings of `flowmesh-bench run`; those that are not derived (limits, indexers, store)
/// are reported as given.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct RunArgs {
    /// A running gateway (`http://host:port`) to measure as it is; without it the Flows are
    /// started here with `flowmesh up` (release binaries next to this one).
    #[arg(long)]
    gateway: Option<String>,
    /// How requests are sent: `native` (`POST /index`, `/search`) or `jina` (`POST /post`).
    #[arg(long, value_enum, default_value = "native")]
    protocol: Protocol,
    /// Concurrent clients, each sending its next request when answered.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Limit of both phases ("30s", "2h"); the queries repeat until it has passed.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip)]
    duration: Option<Duration>,
    /// Limit of the index phase (default: `--duration`, else none).
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip)]
    index_duration: Option<Duration>,
    /// Duration of the query phase, queries repeating (default: `--duration`, else each query
    /// once).
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip)]
    query_duration: Option<Duration>,
    /// Most requests of one phase.
    #[arg(long, default_value_t = 1_000_000)]
    #[serde(skip)]
    max_requests: usize,
    /// The documents and queries.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) workload: WorkloadSpec,
    /// The Flow's shards, replicas, encoder and store.
    #[command(flatten)]
    #[serde(flatten)]
    flow: FlowArgs,
    /// The index backend (one indexer; see `--indexers` for a comparison). Default `flat`;
    /// with `--gateway` it only labels the results.
    #[arg(long, value_enum)]
    #[serde(skip)]
    indexer: Option<IndexerKind>,
    /// annoy: trees.
    #[arg(long, default_value_t = 100)]
    #[serde(skip)]
    num_trees: usize,
    /// annoy: nodes inspected per search (Annoy's default when unset).
    #[arg(long)]
    #[serde(skip)]
    search_k: Option<usize>,
    /// faiss: the `index_factory` key.
    #[arg(long, default_value = "IVF50,Flat")]
    #[serde(skip)]
    index_key: String,
    /// faiss IVF: lists visited per search (faiss's default, 1, when unset).
    #[arg(long)]
    #[serde(skip)]
    nprobe: Option<usize>,
    /// Indexers to compare on the same data and queries, comma separated (faiss keys keep
    /// their commas): `flat,annoy:trees=100,faiss:IVF50,Flat:nprobe=8`. Recall@k is measured
    /// against the first `flat` (added first when missing).
    #[arg(long)]
    #[serde(skip)]
    indexers: Option<String>,
    /// Interval of the summary lines of long phases.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(skip)]
    report_every: Duration,
    /// Longest wait for one answer (also the Flow's executor timeout).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    #[serde(rename = "timeout_s", serialize_with = "crate::load::seconds")]
    timeout: Duration,
    /// Longest wait for the indexers' builds before a query phase.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    #[serde(skip)]
    build_timeout: Duration,
    /// With `--gateway`: query what the Flow holds (`--docs` documents) without indexing.
    #[arg(long)]
    skip_index: bool,
    /// No progress bar, progress lines nor interval summaries.
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
    /// Where to write results.json, results.md and the plots.
    #[arg(long)]
    #[serde(skip)]
    out: Option<PathBuf>,
}

/// The flags of `flowmesh-bench run` that shape the Flows it starts (reported as given).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct FlowArgs {
    /// Indexer shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Encoder replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// The ranker's document store (texts).
    #[arg(long, value_enum, default_value = "embedded")]
    #[serde(skip)]
    store: Store,
    /// Redis for `--store redis`: `redis://host:port/db`.
    #[arg(long)]
    redis_url: Option<String>,
    /// The encoder: `onnx` (MiniLM or MobileNetV2) or `hash` (texts; cheap, for tests).
    #[arg(long, value_enum, default_value = "onnx")]
    encoder: Encoder,
    /// Dimensions of the hash encoder.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// ONNX Runtime threads per encoder replica.
    #[arg(long, default_value_t = 1)]
    encoder_threads: usize,
    /// How the ONNX encoder orders texts into model calls: `length` (its default: similar token
    /// counts together) or `arrival` (the batcher before issue 16), for before/after figures.
    #[arg(long, default_value = "length", value_parser = ["length", "arrival"])]
    encoder_batch_order: String,
    /// Batches of one request in flight in the Flow.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
}

/// The settings a [`Workload`] is made from: flags of `flowmesh-bench run`, reported as given.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct WorkloadSpec {
    /// `text` (sentencizer, MiniLM, indexer shards, ranker) or `image` (MobileNetV2, indexer
    /// shards).
    #[arg(long, value_enum, default_value = "text")]
    scenario: Scenario,
    /// Documents per index request.
    #[arg(long, default_value_t = 50)]
    request_size: usize,
    /// Query documents per search request (default: `--request-size`).
    #[arg(long)]
    #[serde(skip)]
    query_request_size: Option<usize>,
    /// Documents to index.
    #[arg(long, default_value_t = 2000)]
    docs: usize,
    /// Distinct query documents; each is searched once, or they repeat for the query duration.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Matches per query; every query must get exactly this many (fewer only when the index
    /// holds fewer documents).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Seed of the generated documents and queries.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Side of the generated images, in pixels.
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    /// Encoding of the generated images.
    #[arg(long, value_enum, default_value = "jpeg")]
    image_format: ImageFormat,
    /// Most distinct images generated; further documents reuse them under their own ids.
    #[arg(long, default_value_t = 2000)]
    image_pool: usize,
    /// Where documents carry their images: not a flag, but what the protocol reads.
    #[arg(skip = ImageField::Blob)]
    #[serde(skip)]
    image_field: ImageField,
}

impl WorkloadSpec {
    /// Query documents per search request: `--query-request-size`, else `--request-size`.
    pub(crate) fn query_request_size(&self) -> usize {
        self.query_request_size.unwrap_or(self.request_size)
    }
}

/// Every setting of a run, as reported in `results.json`: the flags, and what follows from
/// them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    #[serde(flatten)]
    pub(crate) args: RunArgs,
    pub(crate) query_request_size: usize,
    pub(crate) index_limits: LoadConfig,
    pub(crate) query_limits: LoadConfig,
    pub(crate) indexers: Vec<String>,
    pub(crate) store: String,
    pub(crate) started_unix_s: u64,
}

/// Both phases against one target.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub(crate) phase: PhaseOptions,
    /// The index phase's load; `None` skips it.
    pub(crate) index: Option<LoadConfig>,
    pub(crate) query: LoadConfig,
    /// Documents the index holds before the index phase (0 for a fresh Flow).
    pub(crate) indexed_before: usize,
}

/// What [`run_phases`] measured.
#[derive(Debug)]
pub(crate) struct PhaseResults {
    pub(crate) index: Option<PhaseResult>,
    pub(crate) query: PhaseResult,
}

/// Indexes `workload`'s documents into `target` (unless `opts.index` is `None`), then runs its
/// queries, each answer checked to hold `min(top_k, documents indexed)` matches per query.
/// Any engine that speaks [`Protocol::Native`] or [`Protocol::Jina`] can be measured so.
pub(crate) async fn run_phases(
    target: &Target,
    workload: &Arc<Workload>,
    opts: &RunOptions,
) -> PhaseResults {
    let http = http_client();
    let index = match opts.index {
        Some(load) => {
            let phase = Phase::index(load);
            Some(run_phase(&http, target, workload, &phase, &opts.phase).await)
        }
        None => None,
    };
    let indexed = opts.indexed_before + index.as_ref().map_or(0, |r| r.measured.documents);
    let phase = Phase::search("query", opts.query, workload.spec.top_k.min(indexed));
    let query = run_phase(&http, target, workload, &phase, &opts.phase).await;
    PhaseResults { index, query }
}

impl RunArgs {
    fn workload_spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            // Jina's DocArray reads images from data URIs; flowmesh takes either.
            image_field: match self.protocol {
                Protocol::Native => ImageField::Blob,
                Protocol::Jina => ImageField::DataUri,
            },
            ..self.workload.clone()
        }
    }

    /// `--concurrency` clients, each answer within `--timeout`, under these bounds.
    fn load(&self, max_requests: usize, duration: Duration) -> LoadConfig {
        let mut load = LoadConfig::new(self.concurrency, max_requests, duration);
        load.timeout = self.timeout;
        load
    }

    fn index_limits(&self, workload: &Workload) -> LoadConfig {
        self.load(
            workload.index_batches().min(self.max_requests),
            self.index_duration.or(self.duration).unwrap_or(NO_LIMIT),
        )
    }

    fn query_limits(&self, workload: &Workload) -> LoadConfig {
        match self.query_duration.or(self.duration) {
            Some(duration) => self.load(self.max_requests, duration),
            None => self.load(workload.query_batches().min(self.max_requests), NO_LIMIT),
        }
    }

    fn phase_options(&self) -> PhaseOptions {
        PhaseOptions {
            report_every: self.report_every,
            display: if self.quiet {
                Display::Quiet
            } else {
                Display::Auto
            },
        }
    }

    /// The indexers to measure: `--indexers`, or the one of `--indexer` and its knobs.
    fn specs(&self) -> anyhow::Result<Vec<BackendSpec>> {
        let Some(list) = &self.indexers else {
            let spec = match self.indexer.unwrap_or(IndexerKind::Flat) {
                IndexerKind::Flat => "flat".to_owned(),
                IndexerKind::Annoy => {
                    let mut s = format!("annoy:trees={}", self.num_trees);
                    if let Some(k) = self.search_k {
                        s.push_str(&format!(":search_k={k}"));
                    }
                    s
                }
                IndexerKind::Faiss => {
                    let mut s = format!("faiss:{}", self.index_key);
                    if let Some(n) = self.nprobe {
                        s.push_str(&format!(":nprobe={n}"));
                    }
                    s
                }
            };
            return Ok(vec![spec.parse().map_err(anyhow::Error::msg)?]);
        };
        let mut specs = split_specs(list)
            .iter()
            .map(|s| s.parse::<BackendSpec>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!specs.is_empty(), "--indexers names no indexer");
        if !specs.iter().any(|s| s.name == "flat") {
            specs.insert(0, "flat".parse().map_err(anyhow::Error::msg)?);
        }
        Ok(specs)
    }

    fn store_label(&self) -> String {
        match self.workload.scenario {
            Scenario::Text => self.flow.store.as_str().to_owned(),
            Scenario::Image => "none".to_owned(),
        }
    }

    fn settings(&self, specs: &[BackendSpec], workload: &Workload) -> Settings {
        Settings {
            args: self.clone(),
            query_request_size: workload.spec.query_request_size(),
            index_limits: self.index_limits(workload),
            query_limits: self.query_limits(workload),
            indexers: specs.iter().map(ToString::to_string).collect(),
            store: self.store_label(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn flow_plan(&self) -> FlowPlan<'_> {
        FlowPlan {
            flags: &self.flow,
            workload: &self.workload,
            timeout: self.timeout,
        }
    }

    fn row(&self, op: Operation, indexer: &str, result: PhaseResult) -> Row {
        Row {
            engine: "flowmesh".into(),
            operation: op,
            indexer: indexer.to_owned(),
            store: self.store_label(),
            result,
            build_seconds: None,
            recall: None,
        }
    }
}

/// `flat,faiss:IVF50,Flat:nprobe=8` as `["flat", "faiss:IVF50,Flat:nprobe=8"]`: a part that
/// does not start a backend (`flat`, `annoy`, `faiss`, alone or before `:`) continues the one
/// before, as the commas of a faiss key do.
fn split_specs(list: &str) -> Vec<String> {
    let starts_spec = |part: &str| {
        let kind = part.trim().split(':').next().unwrap_or_default();
        matches!(kind, "flat" | "annoy" | "faiss")
    };
    let mut specs: Vec<String> = Vec::new();
    for part in list.split(',') {
        match specs.last_mut() {
            Some(last) if !starts_spec(part) => {
                last.push(',');
                last.push_str(part.trim());
            }
            _ => specs.push(part.trim().to_owned()),
        }
    }
    specs.retain(|s| !s.is_empty());
    specs
}

/// `flowmesh-bench run`.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(
        args.flow.shards > 0 && args.flow.replicas > 0,
        "--shards and --replicas must be positive"
    );
    anyhow::ensure!(
        !args.skip_index || args.gateway.is_some(),
        "--skip-index needs --gateway (a Flow started here is empty)"
    );
    let specs = args.specs()?;
    eprintln!("generating the workload ...");
    let workload = Arc::new(Workload::new(args.workload_spec())?);
    let settings = args.settings(&specs, &workload);
    let report = match &args.gateway {
        Some(gateway) => against_gateway(&args, gateway, &specs, &workload, settings).await?,
        None => launched(&args, &specs, &workload, settings).await?,
    };
    // The terminal gets aligned columns; results.md keeps the Markdown.
    println!("{}", report.terminal(crate::table::terminal_width()));
    if let Some(out) = &args.out {
        let plots = report.write(out)?;
        eprintln!("results in {} ({} plots)", out.display(), plots.len());
    }
    let errors: usize = report
        .rows
        .iter()
        .map(|r| r.result.measured.error_count())
        .sum();
    anyhow::ensure!(
        errors == 0,
        "{errors} requests failed (errors by kind in results.json)"
    );
    Ok(())
}

/// Both phases against a running gateway; the topology is what its `/status` says.
async fn against_gateway(
    args: &RunArgs,
    gateway: &str,
    specs: &[BackendSpec],
    workload: &Arc<Workload>,
    settings: Settings,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        specs.len() == 1,
        "--indexers needs Flows started here (no --gateway): a running Flow has one indexer"
    );
    let target = Target::new(gateway, args.protocol);
    let http = http_client();
    let topology = flow::status(&http, &target.base).await;
    eprintln!(
        "measuring {}: {}",
        target.base,
        flow::topology_line(&topology)
    );
    let opts = RunOptions {
        phase: args.phase_options(),
        index: (!args.skip_index).then(|| args.index_limits(workload)),
        query: args.query_limits(workload),
        indexed_before: if args.skip_index {
            args.workload.docs
        } else {
            0
        },
    };
    let results = run_phases(&target, workload, &opts).await;
    let indexer = match (&args.indexer, &args.indexers) {
        (None, None) => "as deployed".to_owned(),
        _ => specs[0].to_string(),
    };
    let mut rows = Vec::new();
    if let Some(index) = results.index {
        rows.push(args.row(Operation::Index, &indexer, index));
    }
    rows.push(args.row(Operation::Search, &indexer, results.query));
    Ok(Report {
        settings,
        topology,
        rows,
    })
}

/// Starts the index Flow, indexes, then one query Flow per indexer on the same data.
async fn launched(
    args: &RunArgs,
    specs: &[BackendSpec],
    workload: &Arc<Workload>,
    settings: Settings,
) -> anyhow::Result<Report> {
    // A memory store does not outlive its Flow: index and query in one.
    let one_flow = args.workload.scenario == Scenario::Text && args.flow.store == Store::Memory;
    anyhow::ensure!(
        !one_flow || specs.len() == 1,
        "--store memory loses the documents between Flows: compare indexers with embedded or redis"
    );
    let workspace =
        TempDir(std::env::temp_dir().join(format!("flowmesh-bench-run-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&workspace.0);
    std::fs::create_dir_all(&workspace.0)
        .with_context(|| format!("cannot create {}", workspace.0.display()))?;
    let plan = args.flow_plan();
    let http = http_client();
    let flat: BackendSpec = "flat".parse().map_err(anyhow::Error::msg)?;
    let (index_spec, index_build) = if one_flow {
        (&specs[0], Build::Always)
    } else {
        (&flat, Build::Never)
    };
    let flow_file = plan.write(&workspace.0, index_spec, index_build, 0)?;
    eprintln!("starting the index Flow ({})", flow_file.display());
    let mut running = Some(Launched::flow_at(&flow_file, &workspace.0).await?);
    let gateway = running.as_ref().map(|l| l.base.clone()).unwrap_or_default();
    let topology = flow::status(&http, &gateway).await;
    eprintln!("{gateway}: {}", flow::topology_line(&topology));
    let phase = Phase::index(args.index_limits(workload));
    let target = Target::new(&gateway, args.protocol);
    let index = run_phase(&http, &target, workload, &phase, &args.phase_options()).await;
    let m = &index.measured;
    eprintln!(
        "indexed {} documents at {:.1} documents/s, {} errors",
        m.documents,
        m.docs_per_s(),
        m.error_count()
    );
    let indexed = m.documents;
    let mut rows = vec![args.row(Operation::Index, &index_spec.to_string(), index)];
    let mut truth: Option<std::collections::BTreeMap<usize, Vec<String>>> = None;
    for (n, spec) in specs.iter().enumerate() {
        if !one_flow {
            if let Some(l) = running.take() {
                l.stop().await;
            }
            let file = plan.write(&workspace.0, spec, Build::Always, n + 1)?;
            eprintln!("starting the query Flow for {spec}");
            running = Some(Launched::flow_at(&file, &workspace.0).await?);
        }
        let gateway = running.as_ref().map(|l| l.base.clone()).unwrap_or_default();
        let built = flow::wait_built(&http, &gateway, args.build_timeout).await?;
        let query = query_phase(args, &http, &gateway, workload, spec, indexed).await;
        let mut row = args.row(Operation::Search, &spec.to_string(), query);
        row.build_seconds = Some(built);
        match &truth {
            // The first flat answers are exact: the others' ground truth.
            None if spec.name == "flat" && specs.len() > 1 => {
                truth = Some(row.result.answers.clone());
            }
            Some(t) => {
                let (r, compared) = recall(&row.result.answers, t);
                row.recall = r.map(|r| (r, compared));
            }
            None => {}
        }
        rows.push(row);
    }
    if let Some(l) = running.take() {
        l.stop().await;
    }
    Ok(Report {
        settings,
        topology,
        rows,
    })
}

/// One query phase on a started Flow.
async fn query_phase(
    args: &RunArgs,
    http: &HttpClient,
    gateway: &str,
    workload: &Arc<Workload>,
    spec: &BackendSpec,
    indexed: usize,
) -> PhaseResult {
    let phase = Phase::search(
        format!("query {spec}"),
        args.query_limits(workload),
        args.workload.top_k.min(indexed),
    );
    let target = Target::new(gateway, args.protocol);
    let result = run_phase(http, &target, workload, &phase, &args.phase_options()).await;
    let m = &result.measured;
    eprintln!(
        "query {spec}: {:.1} documents/s, p50 {:.0} ms, {} errors",
        m.docs_per_s(),
        m.latency_ms(0.5),
        m.error_count()
    );
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// The settings of `run --top-k K --docs 10 --request-size 50` on the test workload.
    pub(crate) fn settings(top_k: usize) -> Settings {
        let k = top_k.to_string();
        let cli = Cli::parse_from(["run", "--top-k", &k, "--docs", "10"]);
        let workload = Workload::new(cli.run.workload_spec()).expect("valid");
        cli.run.settings(&[], &workload)
    }

    #[test]
    fn settings_keep_their_json_keys() {
        use crate::report::{keys, sorted};
        let flags = [
            "scenario",
            "gateway",
            "protocol",
            "concurrency",
            "request_size",
            "docs",
            "queries",
            "top_k",
            "shards",
            "replicas",
            "redis_url",
            "seed",
            "encoder",
            "dim",
            "encoder_threads",
            "encoder_batch_order",
            "prefetch",
            "image_size",
            "image_format",
            "image_pool",
            "skip_index",
        ];
        let derived = [
            "query_request_size",
            "index_limits",
            "query_limits",
            "indexers",
            "store",
            "timeout_s",
            "started_unix_s",
        ];
        assert_eq!(
            keys(&settings(5)),
            sorted(&[&flags[..], &derived[..]].concat())
        );
    }

    #[test]
    fn indexer_lists_keep_faiss_commas() {
        assert_eq!(
            split_specs("flat,annoy:trees=100,faiss:IVF50,Flat:nprobe=8, faiss:HNSW32"),
            [
                "flat",
                "annoy:trees=100",
                "faiss:IVF50,Flat:nprobe=8",
                "faiss:HNSW32"
            ]
        );
        assert_eq!(
            split_specs("faiss:IVF256,PQ16,flat"),
            ["faiss:IVF256,PQ16", "flat"]
        );
        assert!(split_specs("").is_empty());
    }
}
