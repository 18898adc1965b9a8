//! `flowmesh-bench mirror`: what mirrored copies cost, and how long a copy takes to come back.
//!
//! 1. Replication's cost. The Flow (default `flows/overhead.yml`) runs twice side by side: once
//!    with one copy of each indexer shard, once with two mirrored copies (`replicas: 2`, which
//!    starts the replicated log). Each round indexes the same documents into both, in an order
//!    that alternates, then searches both at each concurrency; the medians of the rounds and
//!    their ratios are reported.
//! 2. Catch-up. A Flow of one indexer shard with two copies is indexed with `--catchup-vectors`
//!    random vectors of `--dim` dimensions. One copy is killed (SIGKILL) and its data folder
//!    deleted, as a lost disk; the launcher restarts it and it copies what it lacks, and the
//!    time until the gateway sees it ready again is measured twice: with the whole history in
//!    the log (it replays the log) and with a log kept short (`FLOWMESH_LOG_MAX_BYTES`), so that
//!    it copies a snapshot from its peer and then the log's tail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use flowmesh_gateway::flow::spec::{FlowSpec, Uses};
use serde::Serialize;
use serde_json::{json, Value};

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

/// One catch-up of a copy that lost its data.
#[derive(Debug, Serialize)]
struct Catchup {
    /// `log` (replayed the whole log) or `snapshot` (a peer's snapshot, then the log's tail).
    from: &'static str,
    vectors: usize,
    dim: usize,
    log_max_bytes: u64,
    /// From the kill to the gateway seeing the copy ready (the launcher's restart included).
    seconds: f64,
    vectors_per_s: f64,
    /// Whether both copies then report the same count and digest.
    converged: bool,
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
        // The whole history fits in the log; then a log that keeps about a tenth of it.
        let bytes = (args.catchup_vectors * args.dim * 5) as u64;
        for (from, max) in [("log", (bytes * 4).max(1 << 30)), ("snapshot", bytes / 10)] {
            catchup.push(measure_catchup(&args, &dir.0, from, max).await?);
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
    anyhow::ensure!(
        result.catchup.iter().all(|c| c.converged),
        "a copy did not converge with its peer after catching up"
    );
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
            ("log keeps (MB)", Align::Right),
            ("seconds", Align::Right),
            ("vectors/s", Align::Right),
            ("converged", Align::Left),
        ]);
        for r in &result.catchup {
            c.row(vec![
                r.from.to_owned(),
                r.vectors.to_string(),
                r.dim.to_string(),
                format!("{:.0}", r.log_max_bytes as f64 / 1e6),
                format!("{:.1}", r.seconds),
                format!("{:.0}", r.vectors_per_s),
                r.converged.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    out
}

/// Indexes a one-shard Flow with two copies, loses one copy's data, and times its return.
async fn measure_catchup(
    args: &MirrorArgs,
    dir: &Path,
    from: &'static str,
    log_max_bytes: u64,
) -> anyhow::Result<Catchup> {
    let name = format!("catchup-{from}");
    // One shard, two copies, vectors given with the documents (no encoder).
    let yaml = format!(
        "name: {name}\nwith:\n  request_size: 500\nexecutors:\n  - name: indexer\n    uses: indexer\n    replicas: 2\n"
    );
    FlowSpec::from_yaml(&yaml)?;
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, yaml)?;
    let max = log_max_bytes.to_string();
    let mesh = Launched::flow_with(&path, &[], &[("FLOWMESH_LOG_MAX_BYTES", &max)]).await?;
    let outcome = catchup_in(args, &mesh, &name, from, log_max_bytes).await;
    mesh.stop().await;
    outcome
}

async fn catchup_in(
    args: &MirrorArgs,
    mesh: &Launched,
    flow: &str,
    from: &'static str,
    log_max_bytes: u64,
) -> anyhow::Result<Catchup> {
    let client = load::http_client();
    eprintln!(
        "catch-up from the {from}: indexing {} vectors of {} dimensions ...",
        args.catchup_vectors, args.dim
    );
    let mut rng = flowmesh_shared::rng::SplitMix64::new(7);
    let batch = 500;
    for start in (0..args.catchup_vectors).step_by(batch) {
        let end = (start + batch).min(args.catchup_vectors);
        let data: Vec<Value> = (start..end)
            .map(|i| {
                let v: Vec<f32> = (0..args.dim).map(|_| rng.normal()).collect();
                json!({"id": format!("v{i}"), "embedding": v})
            })
            .collect();
        let body = Bytes::from(json!({"data": data}).to_string());
        let answer = load::post(&client, &format!("{}/index", mesh.base), body).await?;
        if answer.status != 200 {
            bail!(
                "indexing failed with {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
    let status = fetch_status(&client, &mesh.base).await?;
    let copy = status["processes"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["executor"] == "indexer" && p["replica"] == 1)
        })
        .cloned()
        .context("no process for copy 1 of the indexer in /status")?;
    let pid = copy["pid"].as_i64().context("copy 1 has no pid")?;
    let workspace = mesh
        .workspace()
        .context("the Flow runs in no workspace of ours")?
        .join(flow)
        .join("indexer")
        .join("shard-0")
        .join("replica-1");
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // The launcher waits before restarting it; its data goes meanwhile.
    std::fs::remove_dir_all(&workspace)
        .with_context(|| format!("cannot delete {}", workspace.display()))?;
    std::fs::create_dir_all(&workspace)?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut seen_down = false;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "copy 1 was not ready again in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = fetch_status(&client, &mesh.base).await?;
        let up = copy_up(&status, 1);
        if !up {
            seen_down = true;
        } else if seen_down {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Both copies' content, as /status reports it.
    let mut converged = false;
    for _ in 0..50 {
        let status = fetch_status(&client, &mesh.base).await?;
        if status["diverged"] == json!(false) && shard_converged(&status) {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("  copy 1 ready again after {seconds:.1} s; converged: {converged}");
    Ok(Catchup {
        from,
        vectors: args.catchup_vectors,
        dim: args.dim,
        log_max_bytes,
        seconds,
        vectors_per_s: args.catchup_vectors as f64 / seconds,
        converged,
    })
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

/// The median of the finite values (NaN when there are none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}
