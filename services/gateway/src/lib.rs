//! The flowmesh gateway: runs a Flow of executors and serves the public search API.
//!
//! [`flow`] holds the Flow's YAML spec, its built-in executors and the engine; [`http`] the API;
//! [`auth`] the client API keys, the route policy and the audit log; [`launcher`] the
//! `flowmesh up` command that starts every process a Flow needs.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod flow;
pub mod grpc;
pub mod http;
pub mod launcher;
pub mod snapshot;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::mirror::{Log, LogArgs};
use flowmesh_shared::server::{bind_and_serve, warn_if_exposed, ServeArgs};
use flowmesh_shared::tls::ClientTlsArgs;

pub use auth::{ApiKeyArgs, ApiKeys};

use crate::snapshot::SnapshotProxy;

pub use flow::{Flow, FlowError, FlowSpec, GatewayLimits};
pub use http::{openapi_json, router, AppState};

/// The gateway's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flowmesh-gateway",
    version,
    about = "Serve a Flow's public API; every executor must have addresses"
)]
pub struct Config {
    /// The Flow file (YAML).
    #[arg(long, env = "FLOWMESH_FLOW")]
    pub flow: PathBuf,
    /// How to listen (and serve HTTPS), and the mesh token sent to the executors.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The client API keys.
    #[command(flatten)]
    pub keys: ApiKeyArgs,
    /// How `https://` executors are verified, and the client certificate shown to them.
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    /// The gateway's own limits.
    #[command(flatten)]
    pub guard: GatewayLimits,
    /// The replicated log of mirrored executors (`--log-url`): needed when the Flow has one.
    #[command(flatten)]
    pub log: LogArgs,
    /// Also serve Jina's gRPC protocol on this address (over TLS with --tls-cert); default: the
    /// Flow's `with: grpc_listen`, else no gRPC.
    #[arg(long, env = "FLOWMESH_GRPC_LISTEN", value_name = "ADDR", value_parser = flowmesh_shared::server::parse_listen)]
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// Let browsers on other origins call the API: answer CORS preflights (without an API key)
    /// and add the CORS headers (as the Flow's `with: {cors: true}`).
    #[arg(long, env = "FLOWMESH_CORS", value_parser = clap::builder::FalseyValueParser::new())]
    pub cors: bool,
}

/// Reads and validates a Flow file.
pub fn load_flow(path: &Path) -> anyhow::Result<FlowSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read flow file {}", path.display()))?;
    FlowSpec::from_yaml(&text).with_context(|| format!("invalid flow file {}", path.display()))
}

/// Connects to the Flow's executors and serves the API until `shutdown` resolves.
///
/// The API keys and the mesh token are read before anything is served (their files again on
/// SIGHUP); the executors are called with the mesh token, over HTTPS where their addresses say
/// `https://`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let spec = load_flow(&config.flow)?;
    let keys = config.keys.load()?;
    let mesh = config
        .serve
        .mesh
        .tokens()
        .context("cannot read the mesh token")?;
    let client = ExecutorClient::secured(&config.client_tls, mesh.clone()).context(
        "invalid client TLS configuration (--tls-ca, --tls-client-cert, --tls-client-key)",
    )?;
    // The log authenticates with the mesh token: NATS is configured with the same one.
    let token = mesh.as_ref().and_then(|m| m.first());
    let log = Log::connect(&config.log, "flowmesh-gateway", token).await?;
    let grpc_listen = config.grpc_listen.or(spec.settings.grpc_listen);
    let flow = Flow::build_with_log(spec, &client, log.as_ref())?;
    keys.reload_on_sighup();
    if let Some(mesh) = &mesh {
        mesh.reload_on_sighup();
    }
    warn_without_keys(&keys, config.serve.listen);
    let state = AppState::new(Arc::new(flow), config.serve.limits.clone())
        .with_guard(config.guard)
        .with_api_keys(keys)
        .with_cors(config.cors);
    // `GET /snapshot/{executor}/{shard}` (flowmesh snapshot) fetches from the copies as the
    // Flow calls them: with the mesh token and the executors' CA.
    let proxy = SnapshotProxy::new(&config.client_tls, mesh)?;
    let grpc_state = state.clone();
    let app = router(state).layer(axum::Extension(proxy));
    let Some(grpc_addr) = grpc_listen else {
        bind_and_serve("flowmesh-gateway", &config.serve, app, shutdown).await?;
        return Ok(());
    };
    // Bound first, so that a bad address fails before the HTTP `listening on` line.
    let tls = config
        .serve
        .tls
        .server_config()
        .context("invalid TLS configuration")?;
    let listener = grpc::bind(grpc_addr, tls.is_some()).await?;
    let shutdown = futures::FutureExt::shared(shutdown);
    let grpc = grpc::serve(listener, grpc_state, tls, shutdown.clone());
    let http = bind_and_serve("flowmesh-gateway", &config.serve, app, shutdown);
    tokio::try_join!(http, grpc)?;
    Ok(())
}

/// Warns when the gateway listens on `listen`, reachable from other hosts, with no API key.
pub fn warn_without_keys(keys: &ApiKeys, listen: std::net::SocketAddr) {
    if !keys.is_enabled() {
        warn_if_exposed(
            "flowmesh-gateway",
            listen,
            "an API key (FLOWMESH_API_KEY, --api-key-file)",
        );
    }
}
