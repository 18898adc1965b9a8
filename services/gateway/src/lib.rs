//! The flowmesh gateway: runs a Flow of executors and serves the public search API.
//!
//! [`flow`] holds the Flow's YAML spec, its built-in executors and the engine; [`http`] the API;
//! [`launcher`] the `flowmesh up` command that starts every process a Flow needs.

#![forbid(unsafe_code)]

pub mod flow;
pub mod http;
pub mod launcher;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::server::{bind_and_serve, ServeArgs};

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
    /// How to listen.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The gateway's own limits.
    #[command(flatten)]
    pub guard: GatewayLimits,
}

/// Reads and validates a Flow file.
pub fn load_flow(path: &Path) -> anyhow::Result<FlowSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read flow file {}", path.display()))?;
    FlowSpec::from_yaml(&text).with_context(|| format!("invalid flow file {}", path.display()))
}

/// Connects to the Flow's executors and serves the API until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let spec = load_flow(&config.flow)?;
    let flow = Flow::build(spec, &ExecutorClient::new())?;
    let app =
        router(AppState::new(Arc::new(flow), config.serve.limits.clone()).with_guard(config.guard));
    bind_and_serve("flowmesh-gateway", &config.serve, app, shutdown).await?;
    Ok(())
}
