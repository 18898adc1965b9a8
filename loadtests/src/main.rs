//! `flowmesh-bench`: flowmesh's benchmark harness.
//!
//! `flowmesh-bench overhead` measures what the mesh itself costs: a Flow of trivial executors
//! (hash encoder, in-memory brute-force index, ranker), indexed with short texts and then
//! searched at several concurrencies, reporting requests/s, latency percentiles and the time
//! spent in each executor (from the gateway's `Server-Timing` header). `flowmesh-bench encoder`
//! compares the encoder service's throughput with its model's raw throughput, for a text or an
//! image model. `flowmesh-bench indexer` measures each index backend's queries/s and recall@k,
//! in-process and through the indexer service over HTTP. `flowmesh-bench run` is the seed's
//! cloud benchmark (text or image Flow, index then query phases, the indexer comparison).
//! `flowmesh-bench compare` runs the same workloads and topology on flowmesh and on Jina 3.34
//! and reports their ratios. `flowmesh-bench abuse` measures normal search traffic, calm and
//! under abusive clients, and what the abusive requests get back.
//!
//! Every subcommand is its own module; all of them drive their load with [`load::run`].

#![forbid(unsafe_code)]

/// mimalloc: every request allocates many small, short-lived buffers; with the system allocator
/// malloc and free took about 12% of the gateway's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod abuse;
mod encoder;
mod indexer;
mod jina;
mod launch;
mod load;
mod mirror;
mod overhead;
mod procstat;
mod report;
mod security;
mod seed;
mod short;
mod table;
mod texts;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "flowmesh-bench", version, about = "Benchmarks for flowmesh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Per-request overhead of the mesh with trivial executors.
    Overhead(overhead::OverheadArgs),
    /// The encoder service's throughput against its model's raw throughput.
    Encoder(encoder::EncoderArgs),
    /// Queries/s and recall of each index backend, in-process and over HTTP.
    Indexer(indexer::IndexerArgs),
    /// The seed's cloud benchmark: index then query a text or image Flow, with validation,
    /// a results table, plots and the indexer comparison.
    Run(seed::RunArgs),
    /// The same workloads on flowmesh and on Jina 3.34, side by side, with their ratios.
    Compare(jina::CompareArgs),
    /// Normal search throughput and latency, calm and while abusive clients send oversized and
    /// invalid requests and hold slowloris and idle connections, interleaved over rounds.
    Abuse(abuse::AbuseArgs),
    /// Mirrored copies of the indexer: indexing and search with one copy against two, and how
    /// long a copy that lost its data takes to catch up from its peer and the log.
    Mirror(mirror::MirrorArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Overhead(args) => overhead::run(args).await,
        Cmd::Encoder(args) => encoder::run(args).await,
        Cmd::Indexer(args) => indexer::run(args).await,
        Cmd::Run(args) => seed::run(args).await,
        Cmd::Compare(args) => jina::run(args).await,
        Cmd::Abuse(args) => abuse::run(args).await,
        Cmd::Mirror(args) => mirror::run(args).await,
    }
}
