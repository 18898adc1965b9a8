//! flowmesh's indexer service: one shard of the vector index.
//!
//! It stores `(id, parent_id, embedding)` of every document on `index` and `update` (of its leaf
//! chunks when it has chunks), answers `search` with each query's top-k stored entries as
//! `matches`, and forgets documents and their chunks on `delete`; other endpoints pass through
//! unchanged. `GET /stats` reports what is stored. A [`Shard`] holds every entry exactly in
//! memory (`flat`: [`FlatIndex`], exact brute force, cosine or L2 [`Metric`]), optionally an
//! approximate structure over them rebuilt in the background (`annoy`, `faiss`), and a log on
//! disk that every acknowledged write reaches before its answer (`wal`).
//!
//! Decisions the design leaves open: a leaf chunk without a `parent_id` is stored with the id of
//! the document that holds it; indexing or updating a document replaces everything stored of it
//! (its chunks that the new version no longer has are dropped, so re-segmented text leaves no
//! stale chunks behind); the first stored vector fixes the dimension for the life of the shard.
//!
//! Unsafe code is denied here as in the whole workspace. The one exception is the AVX2 distance
//! kernel (`kernel.rs`): its module and the call into it allow `unsafe_code`, and each of their
//! `unsafe` blocks carries a `SAFETY:` comment.

#![deny(unsafe_code)]

mod annoy;
mod annoy_index;
mod approx;
mod backend;
mod executor;
mod faiss_index;
mod flat;
mod kernel;
mod openapi;
mod shard;
mod stop;
pub mod synthetic;
mod wal;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::mirror::{Mirror, MirrorArgs, MirrorStats, MirrorStore, Prepared};
use flowmesh_shared::server::{stateful_executor_router, Executor, Limits, ServeArgs};
use flowmesh_shared::{ApiError, Deadline, Endpoint, Envelope};
use serde::Serialize;

pub use annoy::{write_index, AnnoyFile, AnnoyMetric};
pub use annoy_index::AnnoyBuilder;
pub use approx::BuildState;
pub use backend::{Entry, Hit, IndexError, Metric, Stats, VectorIndex};
pub use executor::Indexer;
pub use faiss_index::FaissBuilder;
pub use flat::FlatIndex;
pub use openapi::openapi;
pub use shard::{Shard, ShardStats};

/// The service's name in logs, metrics and its `listening on` line.
pub const SERVICE: &str = "indexer";

/// Which index structure holds the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Exact brute-force search over every stored vector.
    Flat,
    /// Annoy's random-projection forest (`--num-trees`, `--search-k`), in Annoy's file format.
    Annoy,
    /// A faiss index built by `index_factory` from `--index-key`.
    Faiss,
}

/// The indexer's configuration: command-line flags, or `FLOWMESH_INDEXER_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flowmesh-indexer",
    version,
    about = "flowmesh's indexer service (one shard)"
)]
pub struct Config {
    /// Index backend.
    #[arg(long, env = "FLOWMESH_INDEXER_BACKEND", value_enum, default_value_t = BackendKind::Flat)]
    pub backend: BackendKind,
    /// How vectors are compared: cosine similarity, or Euclidean distance (the score is minus
    /// the distance, so that higher is always better).
    #[arg(long, env = "FLOWMESH_INDEXER_METRIC", value_enum, default_value_t = Metric::Cosine)]
    pub metric: Metric,
    /// Where the shard keeps its log and snapshots. Defaults to `$FLOWMESH_WORKSPACE` (set by
    /// `flowmesh up` for each process); with neither, the shard lives in memory only and says so.
    #[arg(long, env = "FLOWMESH_INDEXER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// annoy: number of trees (more: better recall, larger files, slower builds).
    #[arg(long, env = "FLOWMESH_INDEXER_NUM_TREES", default_value_t = 10)]
    pub num_trees: usize,
    /// annoy: nodes a search inspects (Annoy's default, when unset: k x the number of trees).
    #[arg(long, env = "FLOWMESH_INDEXER_SEARCH_K")]
    pub search_k: Option<usize>,
    /// faiss: the `index_factory` key (`Flat`, `IVF50,Flat`, `HNSW32`, `IVF256,PQ16`, ...).
    #[arg(long, env = "FLOWMESH_INDEXER_INDEX_KEY", default_value = "IVF50,Flat")]
    pub index_key: String,
    /// faiss IVF indexes: how many lists a search visits (faiss's default: 1).
    #[arg(long, env = "FLOWMESH_INDEXER_NPROBE")]
    pub nprobe: Option<usize>,
    /// faiss HNSW indexes: the search's candidate list size (faiss's default: 16).
    #[arg(long, env = "FLOWMESH_INDEXER_EF_SEARCH")]
    pub ef_search: Option<usize>,
    /// Approximate backends: fewest new, changed or deleted entries that start a rebuild.
    #[arg(long, env = "FLOWMESH_INDEXER_REBUILD_MIN", default_value_t = 1000)]
    pub rebuild_min: usize,
    /// Approximate backends: or this fraction of the built entries, when larger.
    #[arg(long, env = "FLOWMESH_INDEXER_REBUILD_FRACTION", default_value_t = 0.2)]
    pub rebuild_fraction: f64,
    /// Search: each query's `top_k` matches come from `top_k` different parent documents
    /// (the best chunk of each), so that a ranker aggregating chunk matches by parent finds
    /// `top_k` documents whenever the index holds that many. Searches fetch more candidates
    /// until they have enough distinct parents.
    #[arg(long, env = "FLOWMESH_INDEXER_DISTINCT_PARENTS")]
    pub distinct_parents: bool,
    /// Search: most matches one request may ask for, counted as query vectors (leaf chunks)
    /// times `top_k`; beyond it the answer is 413 `limit_exceeded`. Memory of a search is about 400
    /// bytes per match at peak: the default, 1,000,000, is about 400 MB.
    #[arg(long, env = "FLOWMESH_INDEXER_MAX_MATCHES", default_value_t = executor::DEFAULT_MAX_MATCHES)]
    pub max_matches: usize,
    /// Mirrored copies: the log this copy follows, its peers, a snapshot to restore from.
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Config {
    /// The data directory: `--data-dir`, else `$FLOWMESH_WORKSPACE`, else none.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("FLOWMESH_WORKSPACE").map(PathBuf::from))
    }

    /// Opens the shard this configuration describes, recovering what its data directory holds.
    pub fn shard(&self) -> anyhow::Result<Shard> {
        if !(self.rebuild_fraction >= 0.0 && self.rebuild_fraction.is_finite()) {
            anyhow::bail!("--rebuild-fraction must be a non-negative number");
        }
        let policy = approx::RebuildPolicy {
            min_changes: self.rebuild_min,
            fraction: self.rebuild_fraction,
        };
        let data_dir = self.data_dir();
        let approx = match self.backend {
            BackendKind::Flat => None,
            BackendKind::Annoy => {
                let dir = match &data_dir {
                    Some(dir) => dir.join("annoy"),
                    None => scratch_dir(),
                };
                let builder = AnnoyBuilder::new(&dir, self.num_trees, self.search_k)?;
                Some(approx::Approx::new(self.metric, Arc::new(builder), policy))
            }
            BackendKind::Faiss => {
                let builder = FaissBuilder::new(&self.index_key, self.nprobe, self.ef_search)?;
                Some(approx::Approx::new(self.metric, Arc::new(builder), policy))
            }
        };
        match data_dir {
            Some(dir) => Shard::open(&dir, self.metric, approx)
                .with_context(|| format!("cannot open the shard in {}", dir.display())),
            None => {
                tracing::warn!(
                    "no --data-dir (nor FLOWMESH_WORKSPACE): this shard keeps its vectors in \
                     memory only and loses them when it stops"
                );
                Ok(Shard::in_memory(self.metric, approx))
            }
        }
    }

    /// The indexer this configuration describes.
    pub fn indexer(&self) -> anyhow::Result<Indexer> {
        Ok(Indexer::new(self.shard()?)
            .with_distinct_parents(self.distinct_parents)
            .with_max_matches(self.max_matches))
    }
}

/// The indexer's OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    flowmesh_shared::openapi::to_json(&openapi())
}

/// A directory of this process's own for the Annoy files of a shard without a data directory.
fn scratch_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("flowmesh-annoy-{}-{n}", std::process::id()))
}

/// The indexer's routes: `POST /{endpoint}`, `GET /stats`, `GET /mirror/snapshot`,
/// `/openapi.json` (its example fits the shard's dimension), Swagger UI at `/docs`, `/livez`,
/// `/readyz`, `/metrics` (a shard that is not a mirrored copy).
pub fn router(indexer: Arc<Indexer>, readiness: Readiness, limits: &Limits) -> Router {
    let mirror = Mirror::start(Prepared::unmirrored(), store_of(&indexer));
    router_with_mirror(indexer, readiness, limits, mirror)
}

/// [`router`] for a shard whose writes go through `mirror` (a mirrored copy when it follows a
/// log).
pub fn router_with_mirror(
    indexer: Arc<Indexer>,
    readiness: Readiness,
    limits: &Limits,
    mirror: Mirror,
) -> Router {
    size_metrics_on_scrape(indexer.shard());
    // The example body of the served document fits the vectors this shard holds.
    let shard = Arc::clone(indexer.shard());
    let document = move || {
        let dim = shard.stats().dimension;
        async move { Json(openapi::openapi_for_dimension(dim)) }
    };
    let extra = Router::new()
        .route("/stats", get(stats_get))
        .with_state((Arc::clone(indexer.shard()), mirror.clone()))
        .route("/openapi.json", get(document))
        .merge(flowmesh_shared::openapi::swagger_ui());
    stateful_executor_router(SERVICE, indexer, readiness, limits, extra, mirror)
}

/// The shard as its mirror sees it.
struct MirroredIndexer(Arc<Indexer>);

impl MirrorStore for MirroredIndexer {
    fn apply(
        &self,
        endpoint: Endpoint,
        request: Envelope,
    ) -> futures::future::BoxFuture<'_, Result<Envelope, ApiError>> {
        Box::pin(self.0.call(endpoint, request, Deadline::NONE))
    }

    fn count(&self) -> u64 {
        self.0.shard().len() as u64
    }

    fn digest(&self) -> String {
        self.0.shard().digest()
    }

    fn export(&self) -> Result<Vec<u8>, ApiError> {
        Ok(self.0.shard().export_image())
    }
}

/// The store side of `indexer`'s mirror.
pub fn store_of(indexer: &Arc<Indexer>) -> Arc<dyn MirrorStore> {
    Arc::new(MirroredIndexer(Arc::clone(indexer)))
}

/// Sets the shard's size gauges whenever `/metrics` is scraped, labelled with the executor and
/// shard `flowmesh up` names in `FLOWMESH_EXECUTOR` and `FLOWMESH_SHARD`:
/// `flowmesh_index_vectors`, `flowmesh_index_documents`, and for approximate backends
/// `flowmesh_index_built_vectors` and `flowmesh_index_fresh_vectors`. Once the shard is
/// dropped the hook does nothing.
fn size_metrics_on_scrape(shard: &Arc<Shard>) {
    let shard = Arc::downgrade(shard);
    let labels = shard_labels();
    flowmesh_shared::telemetry::on_scrape(move || {
        let Some(shard) = shard.upgrade() else {
            return;
        };
        let stats = shard.shard_stats();
        metrics::gauge!("flowmesh_index_vectors", &labels).set(stats.index.count as f64);
        metrics::gauge!("flowmesh_index_documents", &labels).set(shard.documents() as f64);
        if let Some(build) = stats.build {
            metrics::gauge!("flowmesh_index_built_vectors", &labels).set(build.built as f64);
            metrics::gauge!("flowmesh_index_fresh_vectors", &labels).set(build.fresh as f64);
        }
    });
}

/// The executor and shard this process serves, as `flowmesh up` names them in
/// `FLOWMESH_EXECUTOR` and `FLOWMESH_SHARD` (else `indexer` and `0`): metric labels, and the
/// shard named in its errors.
fn shard_labels() -> [(&'static str, String); 2] {
    [
        (
            "executor",
            std::env::var("FLOWMESH_EXECUTOR").unwrap_or_else(|_| SERVICE.to_owned()),
        ),
        (
            "shard",
            std::env::var("FLOWMESH_SHARD").unwrap_or_else(|_| "0".to_owned()),
        ),
    ]
}

/// `/stats`: the shard's statistics and its mirror's.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IndexerStats {
    /// Count, dimension, backend, metric, durability, build state.
    #[serde(flatten)]
    pub shard: ShardStats,
    /// The copy's log, applied position, count and content digest (log null when the shard is
    /// not a mirrored copy).
    pub mirror: MirrorStats,
}

/// What the shard holds: count, dimension, backend, metric, durability, for approximate
/// backends the state of the built structure, and its mirror (log position, content digest).
#[utoipa::path(get, path = "/stats", responses(
    (status = 200, description = "The shard's statistics", body = IndexerStats)))]
async fn stats_get(
    State((shard, mirror)): State<(Arc<Shard>, Mirror)>,
) -> Result<Json<IndexerStats>, ApiError> {
    // Reading waits for a writer, which may wait for a long scan: not on the async threads.
    let stats = tokio::task::spawn_blocking(move || shard.shard_stats())
        .await
        .map_err(|e| ApiError::Internal(format!("stats task failed: {e}")))?;
    Ok(Json(IndexerStats {
        shard: stats,
        mirror: mirror.stats().await?,
    }))
}

/// The routes of the indexer `config` describes, ready to serve (not a mirrored copy: see
/// [`serve_app`]).
pub fn app(config: &Config) -> anyhow::Result<Router> {
    if config.mirror.is_mirrored() || config.mirror.restore_from.is_some() {
        anyhow::bail!("--log-url and --restore-from need the indexer's start-up (serve_app)");
    }
    let indexer = config.indexer()?;
    tracing::info!(
        backend = indexer.shard().backend(),
        metric = config.metric.as_str(),
        "index opened"
    );
    Ok(router(
        Arc::new(indexer),
        Readiness::ready(),
        &config.serve.limits,
    ))
}

/// The routes of the indexer `config` describes, as the binary starts them: with `--log-url`
/// a mirrored copy (seeded from a peer when its data directory is empty or too old, then
/// catching up with its log in the background), with `--restore-from` restored first.
pub async fn serve_app(config: &Config) -> anyhow::Result<Router> {
    let mesh = config.serve.mesh.tokens()?;
    let data_dir = config.data_dir();
    let install = |dir: &std::path::Path, bytes: &[u8]| Shard::install_image(dir, bytes);
    let prepared = flowmesh_shared::mirror::prepare(
        &config.mirror,
        data_dir.as_deref(),
        mesh,
        SERVICE,
        &install,
    )
    .await?;
    let config = config.clone();
    let indexer = tokio::task::spawn_blocking(move || config.indexer().map(|i| (i, config)))
        .await
        .map_err(|e| anyhow::anyhow!("opening the shard failed: {e}"))?;
    let (indexer, config) = indexer?;
    tracing::info!(
        backend = indexer.shard().backend(),
        metric = config.metric.as_str(),
        "index opened"
    );
    let indexer = Arc::new(indexer);
    let mirror = Mirror::start(prepared, store_of(&indexer));
    Ok(router_with_mirror(
        indexer,
        Readiness::ready(),
        &config.serve.limits,
        mirror,
    ))
}
