//! `flowmesh-bench mirror`: what mirrored copies cost, and how long a copy takes to come back.
//!
//! 1. Replication's cost. The Flow (default `flows/overhead.yml`) runs twice side by side: once
//!    with one copy of each indexer shard, once with two mirrored copies (`replicas: 2`, which
//!    starts the replicated log). Each round indexes the same documents into both, in an order
//!    that alternates, then searches both at each concurrency; the medians of the rounds and
//!    their ratios are reported.
//! 2. Catch-up, on a Flow of one indexer shard with two copies, of `--catchup-vectors` random
//!    vectors of `--dim` dimensions, two ways:
//!    - `log`: copy 1 is frozen (SIGSTOP, a host cut off) while the vectors are indexed, then
//!      thawed: it reads all of them from the log. Timed from the thaw.
//!    - `peer`: the vectors are indexed, then copy 1 is killed (SIGKILL) and its data folder
//!      deleted, as a lost disk; the launcher restarts it and it installs its peer's snapshot.
//!      Timed from the kill, the launcher's restart delay included.
//!
//!    Each ends when the gateway's `/status` shows copy 1 taking reads again with the same
//!    position and digest as its peer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use flowmesh_gateway::flow::spec::{FlowSpec, Uses};
use serde::Serialize;
use serde_json::{json, Value};

use crate::abuse::tally::median;
use crate::launch::{Launched, TempDir};
use crate::load::{self, get, HttpClient, LoadConfig};
use crate::short;
use crate::table::{Align, Table};

#[derive(Debug, clap::Args)]
pub(crate) struct MirrorArgs {
    /// The Flow whose indexer runs with one copy and with two.
    #[arg(long, default_value = "flows/overhead.yml")]
    flow: PathBuf,
    /// Documents indexed into each Flow in each round.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Documents per index request.
    #[arg(long, default_value_t = 100)]
    request_size: usize,
    /// Index requests in flight.
    #[arg(long, default_value_t = 4)]
    index_concurrency: usize,
    /// Concurrencies of the search phases, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Longest duration of a search phase, in seconds.
    #[arg(long, default_value_t = 8)]
    duration_secs: u64,
    /// Matches per query.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Vectors in the catch-up measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    catchup_vectors: usize,
    /// Their dimension.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One phase of one Flow.
#[derive(Debug, Serialize)]
struct Phase {
    copies: usize,
    round: usize,
    /// `index`, or the search concurrency.
    what: String,
    per_s: f64,
    p50_ms: f64,
    errors: usize,
}

/// The medians, both Flows side by side.
#[derive(Debug, Serialize)]
struct Row {
    what: String,
    unit: &'static str,
    one_copy: f64,
    two_copies: f64,
    ratio: f64,
    one_copy_p50_ms: f64,
    two_copies_p50_ms: f64,
}

/// One catch-up of a copy.
#[derive(Debug, Serialize)]
struct Catchup {
    /// `log` (a copy that was away replays what it missed from the log) or `peer` (a copy that
    /// lost its data installs its peer's snapshot).
    from: &'static str,
    vectors: usize,
    dim: usize,
    /// From the thaw (`log`) or the kill (`peer`) to the gateway's `/status` showing the copy
    /// taking reads, converged with its peer.
    seconds: f64,
    vectors_per_s: f64,
}

#[derive(Debug, Serialize)]
struct MirrorResult {
    benchmark: &'static str,
    docs: usize,
    rounds: usize,
    rows: Vec<Row>,
    phases: Vec<Phase>,
    catchup: Vec<Catchup>,
}

/// `flowmesh-bench mirror`.
pub(crate) async fn run(args: MirrorArgs) -> anyhow::Result<()> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("flowmesh-bench-mirror-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let text = std::fs::read_to_string(&args.flow)
        .with_context(|| format!("cannot read {}", args.flow.display()))?;
    let spec = FlowSpec::from_yaml(&text)?;
    anyhow::ensure!(
        spec.executors.iter().any(|e| e.uses == Uses::Indexer),
        "{} has no indexer",
        args.flow.display()
    );
    let one = write_flow(&dir.0, &spec, 1)?;
    let two = write_flow(&dir.0, &spec, 2)?;
    let mut phases = Vec::new();
    {
        let a = Launched::flow_with(&one, &[], &[]).await?;
        let b = match Launched::flow_with(&two, &[], &[]).await {
            Ok(b) => b,
            Err(e) => {
                a.stop().await;
                return Err(e);
            }
        };
        let measured = measure(&args, [(1, &a), (2, &b)], &mut phases).await;
        a.stop().await;
        b.stop().await;
        measured?;
    }
    let mut catchup = Vec::new();
    if args.catchup_vectors > 0 {
        for from in ["log", "peer"] {
            catchup.push(measure_catchup(&args, &dir.0, from).await?);
        }
    }
    let rows = rows(&args, &phases);
    let result = MirrorResult {
        benchmark: "mirror",
        docs: args.docs,
        rounds: args.rounds.max(1),
        rows,
        phases,
        catchup,
    };
    crate::report::publish(&table(&result), &result, args.out.as_deref())?;
    let errors: usize = result.phases.iter().map(|p| p.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// The Flow with `copies` copies of each indexer shard, written to `dir`.
fn write_flow(dir: &Path, spec: &FlowSpec, copies: usize) -> anyhow::Result<PathBuf> {
    let mut spec = spec.clone();
    spec.name = format!("{}-{copies}", spec.name);
    for e in &mut spec.executors {
        if e.uses == Uses::Indexer {
            e.replicas = copies;
        }
    }
    let path = dir.join(format!("{}.yml", spec.name));
    std::fs::write(&path, serde_yaml_ng::to_string(&spec)?)?;
    Ok(path)
}

async fn measure(
    args: &MirrorArgs,
    meshes: [(usize, &Launched); 2],
    phases: &mut Vec<Phase>,
) -> anyhow::Result<()> {
    let client = load::http_client();
    let docs = Arc::new(short::documents(args.docs));
    for round in 0..args.rounds.max(1) {
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        for m in order {
            let (copies, mesh) = meshes[m];
            let index = short::index(
                &client,
                &mesh.base,
                Arc::clone(&docs),
                args.request_size,
                args.index_concurrency,
                Duration::from_secs(3600),
            )
            .await;
            eprintln!(
                "round {round}, {copies} cop{}: indexed {:.0} documents/s, errors {}",
                if copies == 1 { "y" } else { "ies" },
                index.docs_per_s(),
                index.error_count()
            );
            if index.error_count() > 0 {
                eprintln!("  {:?}", index.error_samples());
            }
            phases.push(Phase {
                copies,
                round,
                what: "index".into(),
                per_s: index.docs_per_s(),
                p50_ms: index.latency_ms(0.5),
                errors: index.error_count(),
            });
        }
        for (ci, &c) in args.concurrency.iter().enumerate() {
            let mut order = [0, 1];
            if (round + ci) % 2 == 1 {
                order.reverse();
            }
            for m in order {
                let (copies, mesh) = meshes[m];
                let config = LoadConfig::new(c, 1_000_000, Duration::from_secs(args.duration_secs));
                let measured =
                    short::search(&client, &mesh.base, &config, args.top_k, short::query_text)
                        .await;
                eprintln!(
                    "round {round}, {copies} cop{}, search concurrency {c}: {:.0} requests/s, \
                     p50 {:.3} ms, errors {}",
                    if copies == 1 { "y" } else { "ies" },
                    measured.requests_per_s(),
                    measured.latency_ms(0.5),
                    measured.error_count()
                );
                phases.push(Phase {
                    copies,
                    round,
                    what: format!("search c={c}"),
                    per_s: measured.requests_per_s(),
                    p50_ms: measured.latency_ms(0.5),
                    errors: measured.error_count(),
                });
            }
        }
    }
    Ok(())
}

fn rows(args: &MirrorArgs, phases: &[Phase]) -> Vec<Row> {
    let mut whats = vec!["index".to_owned()];
    whats.extend(args.concurrency.iter().map(|c| format!("search c={c}")));
    whats
        .into_iter()
        .map(|what| {
            let of = |copies: usize, f: fn(&Phase) -> f64| {
                median(
                    phases
                        .iter()
                        .filter(|p| p.copies == copies && p.what == what)
                        .map(f),
                )
            };
            let (one, two) = (of(1, |p| p.per_s), of(2, |p| p.per_s));
            let (p50_one, p50_two) = (of(1, |p| p.p50_ms), of(2, |p| p.p50_ms));
            Row {
                unit: if what == "index" {
                    "documents/s"
                } else {
                    "requests/s"
                },
                what,
                one_copy: one,
                two_copies: two,
                ratio: two / one,
                one_copy_p50_ms: p50_one,
                two_copies_p50_ms: p50_two,
            }
        })
        .collect()
}

fn table(result: &MirrorResult) -> String {
    let mut t = Table::new([
        ("phase", Align::Left),
        ("1 copy", Align::Right),
        ("2 copies", Align::Right),
        ("2/1", Align::Right),
        ("1 copy p50 ms", Align::Right),
        ("2 copies p50 ms", Align::Right),
    ]);
    for r in &result.rows {
        t.row(vec![
            format!("{} ({})", r.what, r.unit),
            format!("{:.0}", r.one_copy),
            format!("{:.0}", r.two_copies),
            format!("{:.2}", r.ratio),
            format!("{:.2}", r.one_copy_p50_ms),
            format!("{:.2}", r.two_copies_p50_ms),
        ]);
    }
    let mut out = t.render();
    if !result.catchup.is_empty() {
        let mut c = Table::new([
            ("catch-up from", Align::Left),
            ("vectors", Align::Right),
            ("dim", Align::Right),
            ("seconds", Align::Right),
            ("vectors/s", Align::Right),
        ]);
        for r in &result.catchup {
            c.row(vec![
                r.from.to_owned(),
                r.vectors.to_string(),
                r.dim.to_string(),
                format!("{:.1}", r.seconds),
                format!("{:.0}", r.vectors_per_s),
            ]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    out
}

/// Runs a one-shard Flow with two copies and times one catch-up of copy 1 (`from`).
async fn measure_catchup(
    args: &MirrorArgs,
    dir: &Path,
    from: &'static str,
) -> anyhow::Result<Catchup> {
    let name = format!("catchup-{from}");
    // One shard, two copies, vectors given with the documents (no encoder).
    let yaml = format!(
        "name: {name}\nwith:\n  request_size: 500\nexecutors:\n  - name: indexer\n    uses: indexer\n    replicas: 2\n"
    );
    FlowSpec::from_yaml(&yaml)?;
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, yaml)?;
    let mesh = Launched::flow_with(&path, &[], &[]).await?;
    let outcome = catchup_in(args, &mesh, &name, from).await;
    if outcome.is_err() {
        // A frozen copy must not outlive the bench: the launcher stops it with the mesh.
        if let Ok(pid) = copy_pid(&load::http_client(), &mesh.base).await {
            let _ = signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
    mesh.stop().await;
    outcome
}

async fn catchup_in(
    args: &MirrorArgs,
    mesh: &Launched,
    flow: &str,
    from: &'static str,
) -> anyhow::Result<Catchup> {
    let client = load::http_client();
    let pid = copy_pid(&client, &mesh.base).await?;
    if from == "log" {
        // Away while everything is written: a host cut off, neither answering nor dead.
        signal(pid, nix::sys::signal::Signal::SIGSTOP)?;
    }
    eprintln!(
        "catch-up from the {from}: indexing {} vectors of {} dimensions ...",
        args.catchup_vectors, args.dim
    );
    index_vectors(&client, &mesh.base, args.catchup_vectors, args.dim).await?;
    let started = Instant::now();
    if from == "log" {
        signal(pid, nix::sys::signal::Signal::SIGCONT)?;
    } else {
        let data = mesh
            .workspace()
            .context("the Flow runs in no workspace of ours")?
            .join(flow)
            .join("indexer")
            .join("shard-0")
            .join("replica-1");
        signal(pid, nix::sys::signal::Signal::SIGKILL)?;
        // The launcher waits before restarting it; its data goes meanwhile.
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot delete {}", data.display()))?;
        std::fs::create_dir_all(&data)?;
    }
    let deadline = started + Duration::from_secs(1800);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "copy 1 did not catch up in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = fetch_status(&client, &mesh.base).await?;
        if copy_up(&status, 1) && status["diverged"] == json!(false) && shard_converged(&status) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("  copy 1 caught up from the {from} in {seconds:.1} s");
    Ok(Catchup {
        from,
        vectors: args.catchup_vectors,
        dim: args.dim,
        seconds,
        vectors_per_s: args.catchup_vectors as f64 / seconds,
    })
}

/// Indexes `count` random vectors of `dim` dimensions, 500 a request.
async fn index_vectors(
    client: &HttpClient,
    base: &str,
    count: usize,
    dim: usize,
) -> anyhow::Result<()> {
    let mut rng = flowmesh_shared::rng::SplitMix64::new(7);
    let batch = 500;
    for start in (0..count).step_by(batch) {
        let end = (start + batch).min(count);
        let data: Vec<Value> = (start..end)
            .map(|i| {
                let v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
                json!({"id": format!("v{i}"), "embedding": v})
            })
            .collect();
        let body = Bytes::from(json!({"data": data}).to_string());
        let answer = load::post(client, &format!("{base}/index"), body).await?;
        if answer.status != 200 {
            bail!(
                "indexing failed with {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
    Ok(())
}

/// The process id of copy 1 of the indexer, from `/status`.
async fn copy_pid(client: &HttpClient, base: &str) -> anyhow::Result<i32> {
    let status = fetch_status(client, base).await?;
    let copy = status["processes"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["executor"] == "indexer" && p["replica"] == 1)
        })
        .context("no process for copy 1 of the indexer in /status")?;
    let pid = copy["pid"].as_i64().context("copy 1 has no pid")?;
    Ok(i32::try_from(pid)?)
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("cannot send {signal} to copy 1 ({pid})"))
}

async fn fetch_status(client: &HttpClient, base: &str) -> anyhow::Result<Value> {
    let answer = get(client, &format!("{base}/status")).await?;
    anyhow::ensure!(answer.status == 200, "/status answered {}", answer.status);
    Ok(serde_json::from_slice(&answer.body)?)
}

/// The indexer's shard 0 copies, as /status lists them.
fn copies(status: &Value) -> Vec<Value> {
    status["executors"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == "indexer"))
        .and_then(|e| e["shards"][0].as_array())
        .cloned()
        .unwrap_or_default()
}

fn copy_up(status: &Value, copy: usize) -> bool {
    copies(status)
        .get(copy)
        .is_some_and(|c| c["up"] == json!(true) && c["reads"] != json!(false))
}

fn shard_converged(status: &Value) -> bool {
    let copies = copies(status);
    copies.len() == 2
        && copies[0]["digest"].is_string()
        && copies[0]["digest"] == copies[1]["digest"]
        && copies[0]["position"] == copies[1]["position"]
}
