//! flowmesh's ranker service: chunk matches to document matches, and the document store.
//!
//! On `index` and `update` it stores the content of every root document (id, text, blob, uri,
//! tags) in a [`DocStore`]; on `delete` it forgets them. On `search` it groups the matches of
//! each query's chunks by the matched chunk's parent document, aggregates their scores (max,
//! min, mean or sum, as the seed's `SimpleAggregateRanker`), keeps the best `top_k` documents as
//! the query's matches, and fills every match with its stored content. Other endpoints pass
//! through unchanged. Stores: [`EmbeddedStore`] (a redb file in the data directory, the
//! default), [`RedisStore`] (the seed's choice) and [`MemoryStore`] (nothing kept).

#![forbid(unsafe_code)]

mod aggregate;
mod executor;
mod openapi;
mod password;
mod probe;
mod store;

use std::sync::Arc;

use axum::Router;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::mirror::{Mirror, MirrorArgs, MirrorStats, MirrorStore, Prepared};
use flowmesh_shared::secret::redact_url;
use flowmesh_shared::server::{
    executor_router, stateful_executor_router, Executor, Limits, ServeArgs,
};
use flowmesh_shared::{ApiError, Deadline, Endpoint, Envelope};

pub use aggregate::{aggregate, Aggregation};
pub use executor::Ranker;
pub use openapi::openapi;
pub use password::{redis_password, RedisPassword, RemovedFlag, PASSWORD_ENV};
pub use store::{DocStore, EmbeddedStore, MemoryStore, RedisStore, StoreError};

/// The service's name in logs, metrics and its `listening on` line.
pub const SERVICE: &str = "ranker";

/// Which document store holds the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A redb file in the data directory (`--data-dir`, else `$FLOWMESH_WORKSPACE`); in memory,
    /// with a warning, when neither is set.
    Embedded,
    /// Redis at `--redis-url`.
    Redis,
    /// In the ranker's memory; lost when it exits.
    Memory,
}

/// The ranker's configuration: command-line flags, or `FLOWMESH_RANKER_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flowmesh-ranker", version, about = "flowmesh's ranker service")]
pub struct Config {
    /// Document store.
    #[arg(long, env = "FLOWMESH_RANKER_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// The embedded store's directory. Defaults to `$FLOWMESH_WORKSPACE` (set by `flowmesh up`).
    #[arg(long, env = "FLOWMESH_RANKER_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Redis: where it listens (`redis://host:port/db`).
    #[arg(
        long,
        env = "FLOWMESH_RANKER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub redis_url: String,
    /// Redis: a file holding the password (one line; blank lines and `#` comments skipped).
    /// The password may instead be the value of the variable FLOWMESH_RANKER_REDIS_PASSWORD;
    /// never a flag, since every user of the host can read a command line.
    #[arg(long, env = "FLOWMESH_RANKER_REDIS_PASSWORD_FILE", value_name = "PATH")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// The removed `--redis-password VALUE`: hidden, its value forgotten as it is parsed, and
    /// refused at start-up with an error that says what to use instead.
    #[arg(
        long = "redis-password",
        hide = true,
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = password::forget_value
    )]
    pub removed_redis_password: Option<RemovedFlag>,
    /// Redis: prefix of every key, so that several Flows can share one Redis.
    #[arg(
        long,
        env = "FLOWMESH_RANKER_REDIS_PREFIX",
        default_value = "flowmesh:doc:"
    )]
    pub redis_prefix: String,
    /// Redis: longest wait for a connection or a command before answering 503.
    #[arg(long, env = "FLOWMESH_RANKER_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: std::time::Duration,
    /// Redis: how often a background `PING` checks it; `/readyz` answers 503 naming Redis
    /// while it does not answer, and 200 again once it does.
    #[arg(long, env = "FLOWMESH_RANKER_REDIS_PROBE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_probe_interval: std::time::Duration,
    /// How the scores of a document's matched chunks become the document's score.
    #[arg(long, env = "FLOWMESH_RANKER_AGGREGATION", value_enum, default_value_t = Aggregation::Max)]
    pub aggregation: Aggregation,
    /// Chunk scores are "lower is better" (distances): documents are ranked by minus the
    /// aggregate, which becomes their score.
    #[arg(long, env = "FLOWMESH_RANKER_REVERSE")]
    pub reverse: bool,
    /// Mirrored copies of the embedded store: the log this copy follows, its peers, a snapshot
    /// to restore from.
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The ranker's OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    flowmesh_shared::openapi::to_json(&openapi())
}

/// The ranker's routes: `POST /{endpoint}`, `/openapi.json`, Swagger UI at `/docs`, `/livez`,
/// `/readyz`, `/metrics`.
pub fn router<S: DocStore>(
    ranker: Arc<Ranker<S>>,
    readiness: Readiness,
    limits: &Limits,
) -> Router {
    store_metrics_on_scrape(&ranker);
    let extra = Router::new()
        .route("/stats", axum::routing::get(plain_stats_get::<S>))
        .with_state(Arc::clone(&ranker))
        .route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(openapi()) }),
        )
        .merge(flowmesh_shared::openapi::swagger_ui());
    executor_router(SERVICE, ranker, readiness, limits, extra)
}

/// Sets `flowmesh_store_documents` whenever `/metrics` is scraped, for stores that can count
/// cheaply (the embedded and memory stores; not Redis, where it would cost a round trip).
fn store_metrics_on_scrape<S: DocStore>(ranker: &Arc<Ranker<S>>) {
    let ranker = Arc::downgrade(ranker);
    let executor = std::env::var("FLOWMESH_EXECUTOR").unwrap_or_else(|_| SERVICE.to_owned());
    flowmesh_shared::telemetry::on_scrape(move || {
        if let Some(count) = ranker.upgrade().and_then(|r| r.store().count_cheaply()) {
            metrics::gauge!("flowmesh_store_documents", "executor" => executor.clone())
                .set(count as f64);
        }
    });
}

/// The embedded store as its mirror sees it.
struct MirroredRanker(Arc<Ranker<EmbeddedStore>>);

fn store_failed(e: &anyhow::Error) -> ApiError {
    ApiError::Internal(format!("embedded store: {e:#}"))
}

impl MirrorStore for MirroredRanker {
    fn apply(
        &self,
        endpoint: Endpoint,
        request: Envelope,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Envelope, ApiError>> + Send + '_>>
    {
        Box::pin(self.0.call(endpoint, request, Deadline::NONE))
    }

    fn count(&self) -> u64 {
        self.0.store().count().unwrap_or(0)
    }

    fn digest(&self) -> String {
        self.0.store().digest().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the store for its digest");
            String::new()
        })
    }

    fn export(&self) -> Result<Vec<u8>, ApiError> {
        self.0.store().export_image().map_err(|e| store_failed(&e))
    }
}

/// `/stats` of a ranker.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RankerStats {
    /// `embedded`, `redis` or `memory`.
    pub store: &'static str,
    /// Documents stored; null where counting would cost a round trip (Redis).
    pub count: Option<u64>,
    /// The embedded store's copy: its log, applied position, count and content digest (log
    /// null when the store is not a mirrored copy); null for the other stores, which are not
    /// the ranker's own state.
    pub mirror: Option<MirrorStats>,
}

/// `/stats` of a ranker whose store is not its own state (Redis, memory).
async fn plain_stats_get<S: DocStore>(
    axum::extract::State(ranker): axum::extract::State<Arc<Ranker<S>>>,
) -> Result<axum::Json<RankerStats>, ApiError> {
    let store = ranker.store().kind();
    let count = tokio::task::spawn_blocking(move || ranker.store().count_cheaply())
        .await
        .map_err(|e| ApiError::Internal(format!("stats task failed: {e}")))?;
    Ok(axum::Json(RankerStats {
        store,
        count,
        mirror: None,
    }))
}

/// What the embedded store holds, and its mirror (log position, content digest).
#[utoipa::path(get, path = "/stats", responses(
    (status = 200, description = "The store's statistics", body = RankerStats)))]
async fn stats_get(
    axum::extract::State(mirror): axum::extract::State<Mirror>,
) -> Result<axum::Json<RankerStats>, ApiError> {
    let mirror = mirror.stats().await?;
    Ok(axum::Json(RankerStats {
        store: "embedded",
        count: Some(mirror.count),
        mirror: Some(mirror),
    }))
}

/// The routes of a ranker over the embedded store whose writes go through `mirror`:
/// those of [`router`], plus `GET /stats` and `GET /mirror/snapshot`.
pub fn embedded_router(
    ranker: Arc<Ranker<EmbeddedStore>>,
    readiness: Readiness,
    limits: &Limits,
    mirror: Mirror,
) -> Router {
    store_metrics_on_scrape(&ranker);
    let extra = Router::new()
        .route("/stats", axum::routing::get(stats_get))
        .with_state(mirror.clone())
        .route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(openapi()) }),
        )
        .merge(flowmesh_shared::openapi::swagger_ui());
    stateful_executor_router(SERVICE, ranker, readiness, limits, extra, mirror)
}

/// The store side of `ranker`'s mirror.
pub fn store_of(ranker: &Arc<Ranker<EmbeddedStore>>) -> Arc<dyn MirrorStore> {
    Arc::new(MirroredRanker(Arc::clone(ranker)))
}

/// The routes of the ranker `config` describes, as the binary starts them: with the embedded
/// store and `--log-url`, a mirrored copy (seeded from a peer when its data directory is empty
/// or too old, then catching up with its log); with `--restore-from`, restored first. Other
/// stores with `--log-url` are refused: they are not the ranker's own state.
pub async fn serve_app(config: &Config) -> anyhow::Result<Router> {
    let mirrored = config.mirror.is_mirrored() || config.mirror.restore_from.is_some();
    if !mirrored {
        return app(config);
    }
    let data_dir = data_dir(config);
    let dir = match (config.store, data_dir) {
        (StoreKind::Embedded, Some(dir)) => dir,
        (store, _) => anyhow::bail!(
            "--log-url and --restore-from need the embedded store with a data directory              (--store embedded --data-dir DIR): the {store:?} store is not a stateful store of              the ranker's own, and its copies cannot be mirrored"
        ),
    };
    let mesh = config.serve.mesh.tokens()?;
    let install = |dir: &std::path::Path, bytes: &[u8]| EmbeddedStore::install_image(dir, bytes);
    let prepared =
        flowmesh_shared::mirror::prepare(&config.mirror, Some(&dir), mesh, SERVICE, &install)
            .await?;
    let store = EmbeddedStore::open(&dir)?;
    tracing::info!(dir = %dir.display(), "embedded document store opened");
    let ranker = Arc::new(Ranker::new(store, config.aggregation, config.reverse));
    let mirror = Mirror::start(prepared, store_of(&ranker));
    Ok(embedded_router(
        ranker,
        Readiness::ready(),
        &config.serve.limits,
        mirror,
    ))
}

fn data_dir(config: &Config) -> Option<std::path::PathBuf> {
    config
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("FLOWMESH_WORKSPACE").map(std::path::PathBuf::from))
}

/// The routes of the ranker `config` describes, ready to serve (not a mirrored copy: see
/// [`serve_app`]).
pub fn app(config: &Config) -> anyhow::Result<Router> {
    if config.removed_redis_password.is_some() {
        anyhow::bail!(password::REMOVED_FLAG);
    }
    if config.mirror.is_mirrored() || config.mirror.restore_from.is_some() {
        anyhow::bail!("--log-url and --restore-from need the ranker's start-up (serve_app)");
    }
    let readiness = Readiness::ready();
    let limits = &config.serve.limits;
    let (aggregation, reverse) = (config.aggregation, config.reverse);
    let router = match (config.store, data_dir(config)) {
        (StoreKind::Embedded, Some(dir)) => {
            let store = EmbeddedStore::open(&dir)?;
            tracing::info!(dir = %dir.display(), "embedded document store opened");
            let ranker = Arc::new(Ranker::new(store, aggregation, reverse));
            let mirror = Mirror::start(Prepared::unmirrored(), store_of(&ranker));
            embedded_router(ranker, readiness, limits, mirror)
        }
        (StoreKind::Redis, _) => {
            let password = redis_password(
                std::env::var(PASSWORD_ENV).ok(),
                config.redis_password_file.as_deref(),
            )?;
            let store = RedisStore::new(
                &config.redis_url,
                password.as_ref().map(RedisPassword::expose),
                &config.redis_prefix,
                config.redis_timeout,
            )?;
            tracing::info!(
                url = %redact_url(&config.redis_url),
                prefix = %config.redis_prefix,
                password = if password.is_some() { "set" } else { "none" },
                "Redis document store configured"
            );
            probe::probe_redis(store.clone(), config.redis_probe_interval, &readiness);
            router(
                Arc::new(Ranker::new(store, aggregation, reverse)),
                readiness,
                limits,
            )
        }
        (StoreKind::Embedded, None) | (StoreKind::Memory, _) => {
            if config.store == StoreKind::Embedded {
                tracing::warn!(
                    "no --data-dir (nor FLOWMESH_WORKSPACE): documents are kept in memory only"
                );
            }
            let ranker = Ranker::new(MemoryStore::new(), aggregation, reverse);
            router(Arc::new(ranker), readiness, limits)
        }
    };
    tracing::info!(
        store = ?config.store,
        aggregation = ?aggregation,
        reverse,
        "ranker configured"
    );
    Ok(router)
}
