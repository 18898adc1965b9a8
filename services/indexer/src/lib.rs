//! flowmesh's indexer service: one shard of the vector index.
//!
//! It stores `(id, parent_id, embedding)` of every document on `index` and `update` (of its leaf
//! chunks when it has chunks), answers `search` with each query's top-k stored entries as
//! `matches`, and forgets documents and their chunks on `delete`; other endpoints pass through
//! unchanged. `GET /stats` reports what is stored. Backends implement [`VectorIndex`]; the first
//! is `flat` ([`FlatIndex`], exact brute force), with the cosine or the L2 [`Metric`]. Annoy,
//! faiss and persistence will come behind the same trait.
//!
//! Decisions the design leaves open: a leaf chunk without a `parent_id` is stored with the id of
//! the document that holds it; indexing or updating a document replaces everything stored of it
//! (its chunks that the new version no longer has are dropped, so re-segmented text leaves no
//! stale chunks behind); the first stored vector fixes the dimension for the life of the shard.

mod annoy;
mod backend;
mod executor;
mod flat;
mod kernel;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{self, executor_router, ServeArgs};
use flowmesh_shared::ApiError;

pub use annoy::{write_index, AnnoyFile, AnnoyMetric};
pub use backend::{Entry, Hit, IndexError, Metric, Stats, VectorIndex};
pub use executor::Indexer;
pub use flat::FlatIndex;

/// The service's name in logs, metrics and its `listening on` line.
pub const SERVICE: &str = "indexer";

/// Which index structure holds the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Exact brute-force search over every stored vector.
    Flat,
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
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Config {
    /// The (empty) indexer this configuration describes.
    pub fn indexer(&self) -> anyhow::Result<Indexer> {
        Ok(match self.backend {
            BackendKind::Flat => Indexer::new(FlatIndex::new(self.metric)),
        })
    }
}

/// The indexer's routes: `POST /{endpoint}`, `GET /stats`, `/livez`, `/readyz`, `/metrics`.
pub fn router(indexer: Arc<Indexer>, readiness: Readiness, max_body_bytes: usize) -> Router {
    let stats = Router::new()
        .route("/stats", get(stats_get))
        .with_state(Arc::clone(indexer.index()));
    executor_router(SERVICE, indexer, readiness, max_body_bytes, stats)
}

async fn stats_get(State(index): State<Arc<dyn VectorIndex>>) -> Result<Json<Stats>, ApiError> {
    // Reading waits for a writer, which may wait for a long scan: not on the async threads.
    let stats = tokio::task::spawn_blocking(move || index.stats())
        .await
        .map_err(|e| ApiError::Internal(format!("stats task failed: {e}")))?;
    Ok(Json(stats))
}

/// The routes of the indexer `config` describes, ready to serve.
pub fn app(config: &Config) -> anyhow::Result<Router> {
    let indexer = config.indexer()?;
    tracing::info!(
        backend = indexer.index().backend(),
        metric = config.metric.as_str(),
        "index opened"
    );
    Ok(router(
        Arc::new(indexer),
        Readiness::ready(),
        config.serve.max_body_bytes,
    ))
}

/// Opens the index, binds `--listen` (printing the `listening on` line) and serves until
/// `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Build before binding, so that a bad configuration never prints a `listening on` line.
    let app = app(&config).context("invalid configuration")?;
    server::bind_and_serve(SERVICE, config.serve.listen, app, shutdown).await?;
    Ok(())
}
