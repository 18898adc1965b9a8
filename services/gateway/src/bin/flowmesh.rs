//! `flowmesh`: the command-line tool. `flowmesh up FLOW.yml` runs a whole Flow on this machine
//! (and restarts its executor processes when they crash);
//! `flowmesh validate FLOW.yml` checks a Flow file; `flowmesh openapi` prints the gateway's
//! OpenAPI document; `flowmesh snapshot --gateway URL --out DIR` writes a snapshot of every shard
//! that keeps data (`flowmesh up --restore-from DIR` starts a Flow from it);
//! `flowmesh index INPUT --gateway URL` sends a JSONL file, a CSV file or a folder of images to
//! a gateway in batches, resuming where an interrupted run stopped; `flowmesh search TEXT
//! --gateway URL` prints the matches of one query.

#![forbid(unsafe_code)]

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flowmesh_gateway::cli::{index, search, IndexArgs, SearchArgs};
use flowmesh_gateway::launcher::{check_settings, snapshot, up, SnapshotArgs, UpArgs};
use flowmesh_gateway::{load_flow, openapi_json};
use flowmesh_shared::logging::{self, LogArgs, LOG_FORMAT_ENV};
use flowmesh_shared::server::shutdown_signal;
use flowmesh_shared::trace::init_traces;

#[derive(Debug, Parser)]
#[command(
    name = "flowmesh",
    version,
    about = "Neural search as a mesh of services"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start every process of a Flow on this machine and serve its gateway.
    Up(Box<UpArgs>),
    /// Check a Flow file and print its executors: also every executor's `with:` against the
    /// flags of its service binary.
    Validate {
        /// The Flow file (YAML).
        flow: std::path::PathBuf,
        /// Where the service binaries are; default: next to this program, then `PATH`.
        #[arg(long, env = "FLOWMESH_BIN_DIR")]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Print the gateway's OpenAPI document.
    Openapi,
    /// Write a snapshot of every shard of a running Flow's executors that keep data to a folder
    /// (the API key in FLOWMESH_API_KEY); `flowmesh up --restore-from DIR` starts from it.
    Snapshot(SnapshotArgs),
    /// Send the documents of a JSONL file, a CSV file or a folder of images to a gateway's
    /// `/index` in batches, with a progress bar; an interrupted run resumes after the last
    /// acknowledged batch (the API key in FLOWMESH_API_KEY or --api-key-file).
    Index(Box<IndexArgs>),
    /// Search a gateway for one text and print the matches as a table (or `--json`).
    Search(Box<SearchArgs>),
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    // The processes `flowmesh up` starts inherit the environment: set here, before any other
    // thread runs, it gives them the same log format.
    std::env::set_var(LOG_FORMAT_ENV, cli.log.log_format.as_str());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flowmesh: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli.command));
}

async fn run(command: Cmd) {
    let result = match command {
        Cmd::Up(args) => {
            // The gateway runs in this process; each executor process sets up its own traces.
            let traces = init_traces("gateway");
            let result = up(*args, shutdown_signal()).await;
            traces.shutdown().await;
            result
        }
        Cmd::Validate { flow, bin_dir } => validate(&flow, bin_dir.as_deref()).await,
        Cmd::Snapshot(args) => snapshot(args).await,
        Cmd::Index(args) => index(*args).await,
        Cmd::Search(args) => search(*args).await,
        Cmd::Openapi => {
            println!("{}", openapi_json());
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("flowmesh: {e:#}");
        std::process::exit(1);
    }
}

/// `flowmesh validate`: the Flow file, then every executor's `with:` against its binary.
async fn validate(flow: &std::path::Path, bin_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let spec = load_flow(flow)?;
    check_settings(&spec, bin_dir)
        .await
        .with_context(|| format!("invalid flow file {}", flow.display()))?;
    println!("flow {:?} is valid:", spec.name);
    for e in &spec.executors {
        println!(
            "  {} (uses {}, {} shard(s); {})",
            e.name,
            e.uses,
            e.shards,
            e.describe_kind()
        );
    }
    Ok(())
}
