//! `flowmesh up FLOW.yml`: starts every process a Flow needs on this machine, serves the gateway,
//! and stops them all on Ctrl-C or SIGTERM.
//!
//! Each replica of each shard of each flowmesh service in the Flow is started as its own process
//! (`flowmesh-encoder`, ...) on a free port: the child binds port 0 and prints its address, so no
//! port is ever guessed. Its `with:` settings become `--key value` flags, and it learns its place
//! from `FLOWMESH_EXECUTOR`, `FLOWMESH_SHARD`, `FLOWMESH_SHARDS`, `FLOWMESH_REPLICA` and its own
//! data directory from `FLOWMESH_WORKSPACE`. The gateway runs inside this process.
//!
//! Children inherit this process's environment, so the `OTEL_*` variables that turn on trace
//! export reach every executor; a service name set with `OTEL_SERVICE_NAME` becomes
//! `NAME-encoder`, `NAME-indexer`, ... for them, so that each service keeps its own name.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::server::{bind, serve, Limits};

use crate::flow::spec::{AddressesSpec, ExecutorSpec, SERVICES};
use crate::flow::{Flow, FlowSpec};
use crate::{load_flow, router, AppState};

/// `flowmesh up` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The Flow file (YAML).
    pub flow: PathBuf,
    /// Where the gateway listens.
    #[arg(long, env = "FLOWMESH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the service binaries are; default: next to this program, then `PATH`.
    #[arg(long, env = "FLOWMESH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Data directory of the Flow's executors (each replica gets a folder inside).
    #[arg(long, env = "FLOWMESH_WORKSPACE", default_value = ".flowmesh")]
    pub workspace: PathBuf,
    /// How long to wait for every executor to become ready, in seconds.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout_secs: u64,
    /// The gateway's request and connection limits.
    #[command(flatten)]
    pub limits: Limits,
    /// The gateway's own limits (text bytes, sentencizer chunks, request timeout).
    #[command(flatten)]
    pub guard: crate::GatewayLimits,
}

/// One started executor process.
struct Process {
    label: String,
    pid: Option<u32>,
    base: String,
    exited: JoinHandle<()>,
}

/// Starts the Flow, serves until `shutdown` resolves, then stops every process.
pub async fn up(
    args: UpArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut spec = load_flow(&args.flow)?;
    let started = Instant::now();
    let mut processes = Vec::new();
    let result = start_all(&args, &mut spec, &mut processes).await;
    if let Err(e) = result {
        stop_all(processes).await;
        return Err(e);
    }
    let outcome = serve_gateway(&args, spec, &processes, started, shutdown).await;
    stop_all(processes).await;
    outcome
}

async fn start_all(
    args: &UpArgs,
    spec: &mut FlowSpec,
    processes: &mut Vec<Process>,
) -> anyhow::Result<()> {
    let flow_dir = args.workspace.join(&spec.name);
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
    for executor in &mut spec.executors {
        if executor.addresses.is_some() || !SERVICES.contains(&executor.uses.as_str()) {
            continue;
        }
        let binary = find_binary(
            args.bin_dir.as_deref(),
            &format!("flowmesh-{}", executor.uses),
        )?;
        let mut shards = Vec::with_capacity(executor.shards);
        for shard in 0..executor.shards {
            let mut replicas = Vec::with_capacity(executor.replicas);
            for replica in 0..executor.replicas {
                let workspace = flow_dir
                    .join(&executor.name)
                    .join(format!("shard-{shard}"))
                    .join(format!("replica-{replica}"));
                let p = spawn(&binary, executor, shard, replica, &workspace, ready_timeout).await?;
                replicas.push(p.base.clone());
                processes.push(p);
            }
            shards.push(replicas);
        }
        executor.addresses = Some(AddressesSpec::Shards(shards));
    }
    wait_ready(processes, ready_timeout).await
}

async fn serve_gateway(
    args: &UpArgs,
    spec: FlowSpec,
    processes: &[Process],
    started: Instant,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = spec.name.clone();
    let flow = Flow::build(spec, &ExecutorClient::new())?;
    let listener = bind("flowmesh-gateway", args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (use --listen to pick another address)",
                args.listen
            )
        })?;
    let local = listener.local_addr()?;
    let app =
        router(AppState::new(Arc::new(flow), args.limits.clone()).with_guard(args.guard.clone()));
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "flow {name:?}: {} executor processes ready in {:.1}s",
            processes.len(),
            started.elapsed().as_secs_f64()
        )?;
        writeln!(out, "gateway: http://{local}")?;
        writeln!(out, "swagger ui: http://{local}/docs")?;
        out.flush()?;
    }
    serve(listener, app, &args.limits, shutdown).await?;
    Ok(())
}

/// The path of `name`: in `bin_dir` when given, else next to this program, else on `PATH`.
fn find_binary(bin_dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = bin_dir {
        dirs.push(d.to_owned());
    } else {
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            dirs.push(d);
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("cannot find {name} (looked in {}); build it with `cargo build --release --workspace` or pass --bin-dir", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")))
}

/// Turns `with:` settings into flags: `num_trees: 10` becomes `--num-trees 10`, `true` a bare
/// flag, `false` nothing, a list one flag per item.
pub fn settings_to_flags(settings: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut flags = Vec::new();
    for (key, value) in settings {
        let flag = format!("--{}", key.replace('_', "-"));
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in items {
            match item {
                Value::Bool(true) => flags.push(flag.clone()),
                Value::Bool(false) | Value::Null => {}
                Value::String(s) => flags.extend([flag.clone(), s.clone()]),
                other => flags.extend([flag.clone(), other.to_string()]),
            }
        }
    }
    flags
}

async fn spawn(
    binary: &Path,
    executor: &ExecutorSpec,
    shard: usize,
    replica: usize,
    workspace: &Path,
    timeout: Duration,
) -> anyhow::Result<Process> {
    let label = format!("{}/{shard}/{replica}", executor.name);
    std::fs::create_dir_all(workspace)
        .with_context(|| format!("cannot create {}", workspace.display()))?;
    let mut command = Command::new(binary);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        command.env("OTEL_SERVICE_NAME", format!("{name}-{}", executor.uses));
    }
    let mut child: Child = command
        .args(settings_to_flags(&executor.settings))
        .args(["--listen", "127.0.0.1:0"])
        .env("FLOWMESH_EXECUTOR", &executor.name)
        .env("FLOWMESH_SHARD", shard.to_string())
        .env("FLOWMESH_SHARDS", executor.shards.to_string())
        .env("FLOWMESH_REPLICA", replica.to_string())
        .env("FLOWMESH_WORKSPACE", workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(label.clone(), BufReader::new(stderr).lines()));
    }
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{label}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(i) = line.find("listening on ") {
                return Ok(Some(line[i + "listening on ".len()..].trim().to_owned()));
            }
            eprintln!("[{label}] {line}");
        }
        Ok::<_, std::io::Error>(None)
    };
    let base = match tokio::time::timeout(timeout, listening).await {
        Ok(Ok(Some(base))) => base,
        Ok(Ok(None)) => {
            let status = child.wait().await?;
            bail!(
                "{label} ({}) exited with {status} before listening; its log is above",
                binary.display()
            );
        }
        Ok(Err(e)) => return Err(e.into()),
        // The child is killed when dropped (`kill_on_drop`).
        Err(_) => bail!(
            "{label} ({}) did not start listening in {}s",
            binary.display(),
            timeout.as_secs()
        ),
    };
    tokio::spawn(forward(label.clone(), lines));
    let exit_label = format!("{}/{shard}/{replica}", executor.name);
    let exited = tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::info!(process = %exit_label, %status, "executor process exited"),
            Err(e) => {
                tracing::warn!(process = %exit_label, error = %e, "cannot wait for executor process");
            }
        }
    });
    Ok(Process {
        label: format!("{}/{shard}/{replica}", executor.name),
        pid,
        base,
        exited,
    })
}

async fn forward(label: String, mut lines: Lines<impl AsyncBufRead + Unpin>) {
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{label}] {line}");
    }
}

/// Waits until every process answers `/readyz`, printing which ones are still loading.
async fn wait_ready(processes: &[Process], timeout: Duration) -> anyhow::Result<()> {
    let client = ExecutorClient::new();
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for p in processes {
            if p.exited.is_finished() {
                bail!("{} exited while starting; its log is above", p.label);
            }
            let uri = format!("{}/readyz", p.base).parse()?;
            if client.get_ok(uri).await.is_err() {
                waiting.push(p.label.as_str());
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not ready after {}s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("waiting for {} to become ready ...", waiting.join(", "));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to every process, waits up to 10 s, then kills what is left.
async fn stop_all(processes: Vec<Process>) {
    for p in &processes {
        if let Some(pid) = p.pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for p in processes {
        let mut exited = p.exited;
        if tokio::time::timeout_at(deadline, &mut exited)
            .await
            .is_err()
        {
            tracing::warn!(process = %p.label, "did not stop in time; killing it");
            if let Some(pid) = p.pid.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = exited.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_flags() {
        let settings = serde_json::json!({"num_trees": 10, "model": "hash", "reverse": true, "quiet": false, "tag": ["a", "b"]});
        let flags = settings_to_flags(settings.as_object().unwrap());
        assert_eq!(
            flags,
            [
                "--model",
                "hash",
                "--num-trees",
                "10",
                "--reverse",
                "--tag",
                "a",
                "--tag",
                "b"
            ]
        );
    }
}
