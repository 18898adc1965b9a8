//! flowmesh's ranker service: chunk matches to document matches, and the document store.
//!
//! On `index` and `update` it stores the content of every root document (id, text, blob, uri,
//! tags) in a [`DocStore`]; on `delete` it forgets them. On `search` it groups the matches of
//! each query's chunks by the matched chunk's parent document, aggregates their scores (max,
//! min, mean or sum, as the seed's `SimpleAggregateRanker`), keeps the best `top_k` documents as
//! the query's matches, and fills every match with its stored content. Other endpoints pass
//! through unchanged. The first store is the embedded [`MemoryStore`]; Redis will come behind
//! the same trait.

mod aggregate;
mod executor;
mod store;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{self, executor_router, ServeArgs};

pub use aggregate::{aggregate, Aggregation};
pub use executor::Ranker;
pub use store::{DocStore, MemoryStore, StoreError};

/// The service's name in logs, metrics and its `listening on` line.
pub const SERVICE: &str = "ranker";

/// Which document store holds the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// In the ranker's memory; lost when it exits.
    Memory,
}

/// The ranker's configuration: command-line flags, or `FLOWMESH_RANKER_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flowmesh-ranker", version, about = "flowmesh's ranker service")]
pub struct Config {
    /// Document store.
    #[arg(long, env = "FLOWMESH_RANKER_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// How the scores of a document's matched chunks become the document's score.
    #[arg(long, env = "FLOWMESH_RANKER_AGGREGATION", value_enum, default_value_t = Aggregation::Max)]
    pub aggregation: Aggregation,
    /// Chunk scores are "lower is better" (distances): documents are ranked by minus the
    /// aggregate, which becomes their score.
    #[arg(long, env = "FLOWMESH_RANKER_REVERSE")]
    pub reverse: bool,
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The ranker's routes: `POST /{endpoint}`, `/livez`, `/readyz`, `/metrics`.
pub fn router<S: DocStore>(
    ranker: Arc<Ranker<S>>,
    readiness: Readiness,
    max_body_bytes: usize,
) -> Router {
    executor_router(SERVICE, ranker, readiness, max_body_bytes, Router::new())
}

/// The routes of the ranker `config` describes, ready to serve.
pub fn app(config: &Config) -> anyhow::Result<Router> {
    let readiness = Readiness::ready();
    let max_body_bytes = config.serve.max_body_bytes;
    let router = match config.store {
        StoreKind::Memory => {
            let ranker = Ranker::new(MemoryStore::new(), config.aggregation, config.reverse);
            router(Arc::new(ranker), readiness, max_body_bytes)
        }
    };
    tracing::info!(
        store = ?config.store,
        aggregation = ?config.aggregation,
        reverse = config.reverse,
        "document store opened"
    );
    Ok(router)
}

/// Opens the store, binds `--listen` (printing the `listening on` line) and serves until
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
