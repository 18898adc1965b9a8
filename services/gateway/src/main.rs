//! `flowmesh-gateway`: serves a Flow whose executors already run (compose, Ansible).

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use flowmesh_gateway::{run, Config};
use flowmesh_shared::server::shutdown_signal;
use flowmesh_shared::telemetry::init_tracing;

#[tokio::main]
async fn main() {
    init_tracing();
    let config = Config::parse();
    if let Err(e) = run(config, shutdown_signal()).await {
        eprintln!("flowmesh-gateway: {e:#}");
        std::process::exit(1);
    }
}
