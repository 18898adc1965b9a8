//! `flowmesh-bench indexer`: queries per second and recall@k of each index backend, in-process
//! and through the `flowmesh-indexer` service over HTTP, on synthetic clustered data.
//!
//! For each dimension: `--n` vectors around `--clusters` centres and `--queries` queries near
//! stored vectors ([`flowmesh_indexer::synthetic`]); the exact top-k of every query from the
//! flat backend in-process (exact by construction; checked against the f64 reference on the
//! first `--verify-queries`). Then for each `--backend`: a memory-only [`Shard`] built from the
//! same flags as the service, and the service on a temporary data directory, loaded over HTTP
//! with MessagePack requests of `--index-batch` vectors as the gateway sends them. Both are
//! measured with single queries and batches of `--batch`, at each `--concurrency` (threads
//! in-process, connections over HTTP), in alternating slices. One build per backend:
//! `--rebuild-min` is set to `--n`.

mod http_side;
mod measure;
mod report;
pub(crate) mod spec;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use flowmesh_indexer::synthetic::{clustered, exact_top_k, queries_near, recall, Rng};
use flowmesh_indexer::{Entry, Shard, VectorIndex};

use measure::{row_id, Bounds, CallShape, Calls, Slice, Workload};
use report::{BackendRow, Codec, DataSummary, HeadToHead, IndexerResult, SetResult};
use spec::BackendSpec;

/// The flags of `flowmesh-bench indexer` that every data set shares, reported in each.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct SetShape {
    /// Stored vectors per data set.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Distinct queries; measurements cycle through them.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Matches per query (recall@k).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Queries per call of the batched measurements (single-query ones always run too).
    #[arg(long, default_value_t = 50)]
    batch: usize,
}

/// The flags of `flowmesh-bench indexer`, reported as they are in its JSON (but the backends,
/// which its rows list, and the output file).
#[derive(Debug, clap::Args, serde::Serialize)]
pub(crate) struct IndexerArgs {
    /// The data sets' size and the searches' shape.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) shape: SetShape,
    /// Dimensions, comma separated: one data set, and one table, each.
    #[arg(long, value_delimiter = ',', default_value = "384,1280")]
    dims: Vec<usize>,
    /// A backend to measure; repeat the flag for each (faiss keys hold commas): `flat`,
    /// `faiss:KEY[:nprobe=N][:ef=N]`, `annoy[:trees=N][:search_k=N]`.
    #[arg(
        long = "backend",
        default_values = [
            "flat",
            "faiss:Flat",
            "faiss:IVF50,Flat:nprobe=8",
            "faiss:HNSW32:ef=64",
            "annoy:trees=10",
            "faiss:IVF256,PQ16np:nprobe=16",
        ]
    )]
    #[serde(skip)]
    backends: Vec<BackendSpec>,
    /// How vectors are compared (`cosine` or `l2`).
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// Concurrencies, comma separated: threads in-process, connections over HTTP.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    concurrency: Vec<usize>,
    /// Longest duration of one measurement, in seconds (in-process and HTTP each).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Slices each measurement is cut into, in-process and HTTP slices alternating, so that a
    /// change in the machine's load hits both alike.
    #[arg(long, default_value_t = 4)]
    slices: usize,
    /// Most queries one measurement sends.
    #[arg(long, default_value_t = 20_000)]
    max_queries: usize,
    /// Cluster centres of the data (standard normal).
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Standard deviation of the points around their centre.
    #[arg(long, default_value_t = 0.8)]
    spread: f32,
    /// Standard deviation of the queries around the stored vector each is drawn from.
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    /// Seed of the data (each dimension adds itself to it).
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Queries whose exact answers from the flat backend are checked against f64 arithmetic.
    #[arg(long, default_value_t = 20)]
    verify_queries: usize,
    /// Vectors per index request over HTTP.
    #[arg(long, default_value_t = 1000)]
    index_batch: usize,
    /// Longest wait for one build, in seconds.
    #[arg(long, default_value_t = 1800)]
    build_timeout: u64,
    /// Measure in-process only (no service).
    #[arg(long)]
    no_http: bool,
    /// Where to write the JSON results.
    #[arg(long)]
    #[serde(skip)]
    out: Option<PathBuf>,
}

impl IndexerArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.shape.n > 0 && self.shape.k > 0 && self.shape.batch > 0,
            "--n, --k and --batch must be positive"
        );
        anyhow::ensure!(self.shape.k <= self.shape.n, "--k must not exceed --n");
        anyhow::ensure!(
            self.shape.queries >= self.shape.batch,
            "--queries must be at least --batch ({})",
            self.shape.batch
        );
        anyhow::ensure!(!self.dims.contains(&0), "--dims must be positive");
        anyhow::ensure!(
            !self.concurrency.is_empty() && !self.concurrency.contains(&0),
            "--concurrency must be positive"
        );
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds.is_finite(),
            "--seconds must be positive"
        );
        anyhow::ensure!(self.index_batch > 0, "--index-batch must be positive");
        Ok(())
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            duration: Duration::from_secs_f64(self.seconds),
            max_queries: self.max_queries.max(self.shape.batch),
        }
    }

    /// Call sizes measured: single queries, then batches.
    fn batches(&self) -> Vec<usize> {
        if self.shape.batch == 1 {
            vec![1]
        } else {
            vec![1, self.shape.batch]
        }
    }

    /// The indexer's flags for `spec`, the same in-process and for the service.
    fn flags(&self, spec: &BackendSpec) -> Vec<String> {
        let mut flags = spec.flags.clone();
        // One build over everything rather than a chain of rebuilds while it is loaded.
        flags.extend(["--rebuild-min".into(), self.shape.n.to_string()]);
        flags.extend(["--metric".into(), self.metric.clone()]);
        flags
    }
}

/// A memory-only shard from the indexer's flags.
fn shard(flags: &[String]) -> anyhow::Result<Shard> {
    let argv = std::iter::once("flowmesh-indexer".to_owned()).chain(flags.iter().cloned());
    let config = flowmesh_indexer::Config::try_parse_from(argv)?;
    anyhow::ensure!(
        config.data_dir().is_none(),
        "unset FLOWMESH_WORKSPACE: the in-process shards are memory only"
    );
    config.shard()
}

/// Stores rows `0..n` of `data` as `v{row}` in one call.
fn store(shard: &Shard, data: &[f32], dim: usize) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..data.len() / dim).map(row_id).collect();
    let entries: Vec<Entry<'_>> = (0..ids.len())
        .map(|row| Entry {
            id: &ids[row],
            parent_id: None,
            vector: &data[row * dim..(row + 1) * dim],
        })
        .collect();
    shard.upsert(&[], &entries)?;
    Ok(())
}

/// The data set of one dimension, its queries and their exact answers.
struct DataSet {
    data: Vec<f32>,
    workload: Arc<Workload>,
    /// What producing the ground truth took and how well it agrees with f64 arithmetic.
    summary: DataSummary,
}

fn data_set(args: &IndexerArgs, dim: usize) -> anyhow::Result<DataSet> {
    let started = Instant::now();
    let mut rng = Rng::new(args.seed.wrapping_add(dim as u64));
    let data = clustered(args.shape.n, dim, args.clusters, args.spread, &mut rng);
    let queries = queries_near(&data, dim, args.shape.queries, args.noise, &mut rng);
    let generate_s = started.elapsed().as_secs_f64();

    // The flat backend is exact: its answers are the ground truth (f32 sums; the f64 reference
    // is too slow for every query at this size, so it checks a subset).
    let started = Instant::now();
    let flat = shard(&[
        "--backend".into(),
        "flat".into(),
        "--metric".into(),
        args.metric.clone(),
    ])?;
    store(&flat, &data, dim)?;
    let mut truth: Vec<Vec<u32>> = Vec::with_capacity(args.shape.queries);
    for chunk in queries.chunks(dim * 100) {
        let entries: Vec<Entry<'_>> = chunk
            .chunks_exact(dim)
            .map(|vector| Entry {
                id: "q",
                parent_id: None,
                vector,
            })
            .collect();
        for hits in flat.search(&entries, args.shape.k)? {
            let rows = hits
                .iter()
                .map(|h| measure::row_of(&h.id))
                .collect::<Option<Vec<u32>>>()
                .context("flat answered an id that is not v{row}")?;
            anyhow::ensure!(
                rows.len() == args.shape.k,
                "flat found {} of {}",
                rows.len(),
                args.shape.k
            );
            truth.push(rows);
        }
    }
    drop(flat);
    let truth_s = started.elapsed().as_secs_f64();

    let verify = args.verify_queries.min(args.shape.queries);
    let started = Instant::now();
    let metric = match args.metric.as_str() {
        "l2" => flowmesh_indexer::Metric::L2,
        _ => flowmesh_indexer::Metric::Cosine,
    };
    let f64_truth = exact_top_k(&data, &queries[..verify * dim], dim, args.shape.k, metric);
    let flat_subset: Vec<Vec<usize>> = truth[..verify]
        .iter()
        .map(|t| t.iter().map(|&r| r as usize).collect())
        .collect();
    let agreement = recall(&flat_subset, &f64_truth);
    let verify_s = started.elapsed().as_secs_f64();
    eprintln!(
        "dim {dim}: data {generate_s:.1}s, exact top-{} of {} queries by flat {truth_s:.1}s; \
         f64 check of {verify} queries: recall {agreement:.4} ({verify_s:.1}s)",
        args.shape.k, args.shape.queries
    );
    Ok(DataSet {
        data,
        workload: Arc::new(Workload {
            dim,
            k: args.shape.k,
            queries,
            truth,
        }),
        summary: DataSummary {
            generate_s,
            ground_truth: "flat backend in-process (f32, exact scan)",
            ground_truth_s: truth_s,
            f64_verified_queries: verify,
            f64_agreement_recall: agreement,
        },
    })
}

/// A memory-only shard of `spec` holding the data set, built; and the seconds that took.
fn built_shard(
    args: &IndexerArgs,
    spec: &BackendSpec,
    set: &DataSet,
) -> anyhow::Result<(Shard, f64)> {
    let shard = shard(&args.flags(spec))?;
    let started = Instant::now();
    store(&shard, &set.data, set.workload.dim)?;
    shard.wait_idle();
    let build_s = started.elapsed().as_secs_f64();
    if let Some(build) = shard.shard_stats().build {
        anyhow::ensure!(
            build.built == args.shape.n && build.fresh == 0,
            "{spec}: the build did not take every vector in: {build:?}"
        );
    }
    eprintln!("  {spec} in-process: stored and built in {build_s:.1}s");
    Ok((shard, build_s))
}

/// Every measurement of one backend: for each call size and concurrency, `--slices` slices
/// in-process and over HTTP in turn.
async fn measure_backend(
    args: &IndexerArgs,
    spec: &BackendSpec,
    set: &DataSet,
) -> anyhow::Result<BackendRow> {
    let (shard, build_s) = tokio::task::block_in_place(|| built_shard(args, spec, set))?;
    let service = match args.no_http {
        true => None,
        false => Some(http_side::Service::start(args, spec, set).await?),
    };
    let slices = args.slices.max(1);
    let bounds = args.bounds();
    let slice_bounds = Bounds {
        duration: bounds.duration / slices as u32,
        max_queries: bounds.max_queries.div_ceil(slices),
    };
    let mut phases = Vec::new();
    let mut codec = Vec::new();
    for batch in args.batches() {
        let bodies: Arc<Vec<bytes::Bytes>> = match service {
            Some(_) => Arc::new(tokio::task::block_in_place(|| {
                measure::search_bodies(&set.workload, batch)
            })?),
            None => Arc::default(),
        };
        if let (Some(service), Some(body)) = (&service, bodies.first()) {
            let (in_service, in_client) = service.codec_ms(body).await?;
            codec.push(Codec {
                batch,
                service_ms: in_service,
                client_ms: in_client,
            });
        }
        for &concurrency in &args.concurrency {
            let shape = CallShape { batch, concurrency };
            let (mut local, mut remote) = (Slice::default(), Slice::default());
            for i in 0..slices {
                let calls = Calls {
                    shape,
                    bounds: slice_bounds,
                    warm_up: i == 0,
                };
                let slice = tokio::task::block_in_place(|| {
                    measure::in_process(&shard, &set.workload, calls)
                });
                local = local.merge(slice);
                if let Some(service) = &service {
                    remote = remote.merge(service.slice(&set.workload, &bodies, calls).await);
                }
            }
            let local = local.phase("in-process", shape);
            report::progress(&local);
            phases.push(local);
            if service.is_some() {
                let remote = remote.phase("http", shape);
                report::progress(&remote);
                phases.push(remote);
            }
        }
    }
    drop(shard);
    let row = BackendRow {
        backend: spec.name.clone(),
        params: spec.params.clone(),
        flags: args.flags(spec),
        build_s,
        load_average: report::load_average(),
        phases,
        codec_ms: codec,
        http: service.as_ref().map(|s| s.loading),
    };
    if let Some(service) = service {
        service.stop().await;
    }
    Ok(row)
}

/// `flat` against `faiss:Flat` in-process at concurrency 1, in alternating slices: the two are
/// compared directly, so a change in the machine's load between their own rows cannot decide
/// the ratio. `None` unless both are among the backends.
fn flat_against_faiss(
    args: &IndexerArgs,
    set: &DataSet,
) -> anyhow::Result<Option<Vec<HeadToHead>>> {
    let find = |name: &str| {
        args.backends
            .iter()
            .find(|b| b.name == name && b.params.is_empty())
    };
    let (Some(flat), Some(faiss)) = (find("flat"), find("faiss:Flat")) else {
        return Ok(None);
    };
    let (flat_shard, _) = built_shard(args, flat, set)?;
    let (faiss_shard, _) = built_shard(args, faiss, set)?;
    let slices = args.slices.max(1);
    let bounds = args.bounds();
    let mut rows = Vec::new();
    for batch in args.batches() {
        let shape = CallShape {
            batch,
            concurrency: 1,
        };
        let (mut a, mut b) = (Slice::default(), Slice::default());
        for i in 0..slices {
            let calls = Calls {
                shape,
                bounds: Bounds {
                    duration: bounds.duration / slices as u32,
                    max_queries: bounds.max_queries.div_ceil(slices),
                },
                warm_up: i == 0,
            };
            a = a.merge(measure::in_process(&flat_shard, &set.workload, calls));
            b = b.merge(measure::in_process(&faiss_shard, &set.workload, calls));
        }
        let (a, b) = (a.phase("in-process", shape), b.phase("in-process", shape));
        eprintln!(
            "  flat / faiss:Flat, batch {batch}: {:.0} / {:.0} q/s = {:.0}%",
            a.queries_per_s,
            b.queries_per_s,
            100.0 * a.queries_per_s / b.queries_per_s
        );
        rows.push(HeadToHead::new(batch, &a, &b));
    }
    Ok(Some(rows))
}

pub(crate) async fn run(args: IndexerArgs) -> anyhow::Result<()> {
    args.check()?;
    let mut tables = Vec::new();
    let mut results = Vec::new();
    for &dim in &args.dims {
        let set = tokio::task::block_in_place(|| data_set(&args, dim))?;
        let head_to_head = tokio::task::block_in_place(|| flat_against_faiss(&args, &set))?;
        let mut rows = Vec::new();
        for spec in &args.backends {
            rows.push(measure_backend(&args, spec, &set).await?);
        }
        let result = SetResult {
            dim,
            shape: args.shape.clone(),
            data: set.summary,
            flat_vs_faiss_flat: head_to_head,
            backends: rows,
        };
        let table = report::table(&result);
        eprintln!("\n{table}");
        tables.push(table);
        results.push(result);
    }
    let errors: usize = results.iter().map(SetResult::errors).sum();
    let result = IndexerResult {
        benchmark: "indexer",
        settings: &args,
        machine: report::machine(),
        sets: results,
    };
    crate::report::publish(&tables.join("\n"), &result, args.out.as_deref())?;
    anyhow::ensure!(
        errors == 0,
        "{errors} search calls failed or had wrong match counts"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: IndexerArgs,
    }

    #[test]
    fn the_result_reports_every_flag_but_the_backends_and_the_output() {
        let cli = Cli::parse_from(["indexer", "--n", "50", "--out", "x.json"]);
        let result = IndexerResult {
            benchmark: "indexer",
            settings: &cli.args,
            machine: report::machine(),
            sets: Vec::new(),
        };
        let flags = [
            "n",
            "queries",
            "k",
            "batch",
            "dims",
            "metric",
            "concurrency",
            "seconds",
            "slices",
            "max_queries",
            "clusters",
            "spread",
            "noise",
            "seed",
            "verify_queries",
            "index_batch",
            "build_timeout",
            "no_http",
        ];
        let top = [&flags[..], &["benchmark", "machine", "sets"]].concat();
        assert_eq!(crate::report::keys(&result), crate::report::sorted(&top));
        assert_eq!(serde_json::to_value(&result).expect("JSON")["n"], 50);
    }
}
