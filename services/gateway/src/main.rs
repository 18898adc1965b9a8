//! `flowmesh-gateway`: serves a Flow whose executors already run (compose, Ansible).

#![forbid(unsafe_code)]

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use flowmesh_gateway::{run, Config};
use flowmesh_shared::server::shutdown_signal;
use flowmesh_shared::telemetry::init_tracing;
use flowmesh_shared::trace::init_traces;

#[tokio::main]
async fn main() {
    init_tracing();
    let config = Config::parse();
    let traces = init_traces("gateway");
    let result = run(config, shutdown_signal()).await;
    traces.shutdown().await;
    if let Err(e) = result {
        eprintln!("flowmesh-gateway: {e:#}");
        std::process::exit(1);
    }
}
