//! `flowmesh-indexer`: the indexer service (one shard) of a flowmesh Flow (see the library's docs).

#![forbid(unsafe_code)]

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use flowmesh_indexer::{run, Config};
use flowmesh_shared::server::shutdown_signal;
use flowmesh_shared::telemetry::init_tracing;
use flowmesh_shared::trace::init_traces;

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let config = Config::parse();
    let traces = init_traces("indexer");
    let result = run(config, shutdown_signal()).await;
    traces.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowmesh-indexer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
