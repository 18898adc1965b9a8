//! `flowmesh-bench abuse`: the normal search load, calm and then under abuse, interleaved over
//! several rounds in one run, so that both see the same mesh in the same state.
//!
//! Each round runs the same bounded closed-loop search load twice: once alone (calm), then
//! while abusive clients send oversized and invalid requests (top_k 10^12 and 1e9, a 5 MB
//! text, malformed JSON, one document over `--max-documents`, a MessagePack body with a lying
//! array header to an executor) and hold slowloris and idle connections. It reports the normal
//! traffic's QPS, p50/p99 and errors for both, their p99 ratio (the goal: within 2x, 0
//! errors), what every abusive request got back (it should be a 4xx, 503 or 504, never a hang or
//! another 5xx), and whether every process is alive afterwards.

mod attack;
mod health;
mod report;
pub(crate) mod tally;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::launch::Gateway;
use crate::load::{self, LoadConfig};
use crate::short;
use attack::{Kind, Target};
use flowmesh_shared::server::MESH_TOKEN_ENV;
use report::{Abuse, Normal, Report, Round};
use tally::PhaseSummary;

/// The settings of `flowmesh-bench abuse`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct AbuseArgs {
    /// A running gateway to target; without it the Flow is started with `flowmesh up`.
    #[arg(long)]
    #[serde(skip)]
    gateway: Option<String>,
    /// The Flow to start when no gateway is given (flows/overhead.yml, with a hash encoder, for
    /// a quick run).
    #[arg(long, default_value = "flows/text.yml")]
    #[serde(skip)]
    flow: PathBuf,
    /// Virtual memory allowed to each process of the started Flow, in MiB (`prlimit --as`), so
    /// that a request that allocates without bound fails that process, not the machine (needs
    /// `prlimit`, from util-linux); 0 for no limit.
    #[arg(long, default_value_t = 4096)]
    process_memory_mib: u64,
    /// Documents to index before searching.
    #[arg(long, default_value_t = 300)]
    docs: usize,
    /// Normal search clients (closed loop).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Abusive request clients (closed loop) during each abused phase.
    #[arg(long, default_value_t = 4)]
    abusers: usize,
    /// Rounds of one calm and one abused phase.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Longest duration of each phase, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Most normal search requests per phase.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Most abusive requests per abused phase.
    #[arg(long, default_value_t = 100_000)]
    abusive_requests: usize,
    /// Matches per normal query; every answer is checked to have exactly this many.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Kinds of abuse, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Kind::all())]
    #[serde(serialize_with = "kind_names")]
    kinds: Vec<Kind>,
    /// 5 MB texts sent per abused phase (each can keep an unprotected encoder busy for long).
    #[arg(long, default_value_t = 1)]
    huge_texts: usize,
    /// Slowloris connections held during each abused phase.
    #[arg(long, default_value_t = 20)]
    slowloris: usize,
    /// Idle connections held during each abused phase.
    #[arg(long, default_value_t = 200)]
    idle: usize,
    /// The gateway's `--max-documents`: the abusive request sends one more.
    #[arg(long, default_value_t = flowmesh_shared::limits::DEFAULT_MAX_DOCUMENTS)]
    max_documents: usize,
    /// Seconds an abusive request may take before it counts as a hang.
    #[arg(long, default_value_t = 90)]
    abusive_timeout_secs: u64,
    /// Seconds a normal request may take before it counts as an error.
    #[arg(long, default_value_t = 60)]
    request_timeout_secs: u64,
    /// Where to write the JSON results.
    #[arg(long)]
    #[serde(skip)]
    out: Option<PathBuf>,
    /// Exit non-zero unless both goals are met (by default only a failure to run does).
    #[arg(long)]
    #[serde(skip)]
    check: bool,
}

impl Kind {
    fn all() -> Vec<Self> {
        <Self as clap::ValueEnum>::value_variants().to_vec()
    }
}

/// Runs the benchmark: start (or reach) the mesh, index, then the rounds.
pub(crate) async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    let limit = (args.process_memory_mib > 0).then_some(args.process_memory_mib << 20);
    // The mesh token the attacks on executors carry (they test the executors' limits, not
    // their door): the one of a given mesh from FLOWMESH_MESH_TOKEN, else one made here for the
    // mesh started here.
    let mesh_token = match std::env::var(MESH_TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => crate::security::random_hex()?,
    };
    let gateway = Gateway::given_or_started(
        args.gateway.as_deref(),
        &args.flow,
        limit,
        Some(&mesh_token),
    )
    .await?;
    let outcome = measure(&args, &gateway.base, &mesh_token).await;
    gateway.stop().await;
    let report = outcome?;
    crate::report::publish(&report.markdown(), &report, args.out.as_deref())?;
    if args.check {
        anyhow::ensure!(
            report.normal_traffic_goal_met && report.abuse_goal_met,
            "the goals are not met (normal traffic: {}, abuse: {})",
            report.normal_traffic_goal_met,
            report.abuse_goal_met
        );
    }
    Ok(())
}

async fn measure(args: &AbuseArgs, gateway: &str, mesh_token: &str) -> anyhow::Result<Report> {
    let client = load::http_client();
    let replicas = health::replicas(&health::status(&client, gateway).await?);
    index(&client, gateway, args.docs).await?;
    let mut normal = LoadConfig::new(
        args.clients,
        args.requests,
        Duration::from_secs(args.duration_secs),
    );
    normal.timeout = Duration::from_secs(args.request_timeout_secs);
    // The normal traffic: the same bounded closed-loop search load in every phase (each
    // request bounded by its timeout, so a phase ends by its duration + the timeout).
    let (normal, http, top_k) = (&normal, &client, args.top_k);
    let normal_phase = move || async move {
        PhaseSummary::of(&short::search(http, gateway, normal, top_k, short::query_text).await)
    };
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();
    let requests = Arc::new(attack::requests(
        &args.kinds,
        &Target {
            gateway,
            executors: &addresses,
            max_documents: args.max_documents,
            huge_texts_per_round: args.huge_texts,
        },
    ));
    let count = |kind| if args.kinds.contains(&kind) { 1 } else { 0 };
    let (slowloris, idle) = (
        args.slowloris * count(Kind::Slowloris),
        args.idle * count(Kind::Idle),
    );
    // The abusers get their own client: their connections must not be the normal traffic's.
    // It carries the mesh token (the gateway, without API keys, ignores it).
    let abusive_client = load::bearer_client(mesh_token)?;
    let abusive_timeout = Duration::from_secs(args.abusive_timeout_secs);
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}: calm ...", args.rounds);
        let calm = normal_phase().await;
        eprintln!("round {round}/{}: abused ...", args.rounds);
        let now = Instant::now();
        let until = now
            .checked_add(normal.duration)
            .unwrap_or(now + load::NO_LIMIT);
        let (abused, abusive_requests, abusive_connections) = tokio::join!(
            normal_phase(),
            attack::requests_loop(
                &abusive_client,
                requests.clone(),
                args.abusers,
                args.abusive_requests,
                until,
                abusive_timeout
            ),
            attack::connections(gateway, slowloris, idle, until),
        );
        let alive_after = health::check(&client, gateway, &replicas).await;
        eprintln!(
            "round {round}: calm p99 {:.1} ms ({} errors), abused p99 {:.1} ms ({} errors), \
             {} of {} abusive requests unacceptable, all alive: {}",
            calm.load.p99_ms,
            calm.load.errors,
            abused.load.p99_ms,
            abused.load.errors,
            abusive_requests.unacceptable,
            abusive_requests.total,
            alive_after.all_alive
        );
        let abuse = Abuse {
            abusive_requests,
            abusive_connections,
        };
        rounds.push(Round {
            round,
            normal: Normal::new(calm, abused),
            abuse,
            alive_after,
        });
    }
    let alive_at_end = health::check(&client, gateway, &replicas).await;
    Ok(Report::new(
        gateway.to_owned(),
        settings(args),
        rounds,
        alive_at_end,
    ))
}

/// Indexes `docs` short texts, 50 a request, 2 at a time; every request must succeed, all
/// within [`INDEX_TIMEOUT`].
async fn index(client: &load::HttpClient, gateway: &str, docs: usize) -> anyhow::Result<()> {
    const SIZE: usize = 50;
    const INDEX_TIMEOUT: Duration = Duration::from_secs(600);
    eprintln!("indexing {docs} documents into {gateway} ...");
    // The driver stops sending after its duration but waits for answers without a bound.
    let docs = Arc::new(short::documents(docs));
    let indexing = short::index(client, gateway, docs, SIZE, 2, INDEX_TIMEOUT);
    let m = tokio::time::timeout(INDEX_TIMEOUT, indexing)
        .await
        .map_err(|_| anyhow::anyhow!("indexing took over {INDEX_TIMEOUT:?}"))?;
    anyhow::ensure!(
        m.error_count() == 0,
        "indexing failed: {:?}",
        m.error_samples()
    );
    Ok(())
}

/// `kinds` by their flag names.
fn kind_names<S: serde::Serializer>(kinds: &[Kind], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(kinds.iter().map(|k| k.name()))
}

/// Every setting of a run, as reported: the flags, and the Flow when one was started here.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    flow: Option<String>,
    #[serde(flatten)]
    args: AbuseArgs,
}

fn settings(args: &AbuseArgs) -> Settings {
    Settings {
        flow: args
            .gateway
            .is_none()
            .then(|| args.flow.display().to_string()),
        args: args.clone(),
    }
}

/// The settings of `abuse` with its defaults.
#[cfg(test)]
pub(crate) fn default_settings() -> Settings {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AbuseArgs,
    }
    settings(&Cli::parse_from(["abuse"]).args)
}
